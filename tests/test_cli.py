"""The training CLI fails with one clear line and a nonzero exit on bad input."""

import os
import subprocess
import sys

from tests.conftest import REPO


def _main(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "unet_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _only_error_line(proc) -> str:
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ")
  return lines[0]


def test_unknown_config_key(tmp_path):
  proc = _main("--config=configs/synthetic.py", f"--workdir={tmp_path}",
               "--config.model.featurs=8")
  assert proc.returncode == 2
  line = _only_error_line(proc)
  assert "'featurs'" in line and "--config.model.featurs" in line and '"features"' in line


def test_missing_config_file(tmp_path):
  proc = _main("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert proc.returncode == 2
  assert "configs/nope.py" in _only_error_line(proc)


def test_workdir_that_cannot_be_created(tmp_path):
  if os.geteuid() == 0:  # root ignores permission bits; /proc refuses new directories.
    workdir = "/proc/unet_jax_test/run"
  else:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    workdir = str(locked / "run")
  proc = _main("--config=configs/synthetic.py", f"--workdir={workdir}")
  assert proc.returncode == 2
  line = _only_error_line(proc)
  assert workdir in line and "--workdir" in line


def test_real_dataset_without_its_data_says_what_is_missing(tmp_path):
  proc = _main("--config=configs/synthetic.py", f"--workdir={tmp_path}",
               "--config.dataset=carvana", f"--config.data_dir={tmp_path / 'none'}")
  assert proc.returncode == 2
  assert "carvana" in _only_error_line(proc)


def test_unknown_host_malloc_names_the_choices_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = _main("--config=configs/synthetic.py", f"--workdir={workdir}",
               "--config.host_malloc=fast")
  assert proc.returncode == 2
  line = _only_error_line(proc)
  assert "host_malloc='fast'" in line and "system or reuse" in line
  assert not workdir.exists()


def _main_without_native_kernels(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "unet_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", UNET_JAX_DISABLE_NATIVE="1"))


def test_onednn_asked_for_without_the_kernels(tmp_path):
  proc = _main_without_native_kernels("--config=tests/tiny_config.py",
                                      f"--workdir={tmp_path / 'run'}",
                                      "--config.model.conv_impl=onednn")
  assert proc.returncode == 2
  line = _only_error_line(proc)
  assert "conv_impl=onednn" in line and "UNET_JAX_DISABLE_NATIVE" in line
  assert "--config.model.conv_impl=auto" in line
  assert not (tmp_path / "run").exists()  # Refused before anything was written.


def test_auto_falls_back_to_xla_with_one_log_line(tmp_path):
  proc = _main_without_native_kernels("--config=tests/tiny_config.py",
                                      f"--workdir={tmp_path / 'run'}",
                                      "--config.num_train_steps=2", "--config.eval_every_steps=2")
  assert proc.returncode == 0, proc.stderr[-2000:]
  fallback = [l for l in proc.stderr.splitlines() if "uses XLA's convolutions" in l]
  assert len(fallback) == 1 and "UNET_JAX_DISABLE_NATIVE" in fallback[0]
  assert (tmp_path / "run" / "best.json").exists()


def test_unknown_optimizer_or_plateau_mode_is_one_line_before_any_work(tmp_path):
  workdir = tmp_path / "run"
  proc = _main("--config=configs/synthetic.py", f"--workdir={workdir}",
               "--config.optimizer=rmsprp")
  assert proc.returncode == 2
  assert "choose adam, adamw, sgd, rmsprop" in _only_error_line(proc)
  proc = _main("--config=configs/synthetic.py", f"--workdir={workdir}",
               "--config.lr_plateau_patience=3", "--config.lr_plateau_mode=maximum")
  assert proc.returncode == 2
  assert "--config.lr_plateau_mode to min or max" in _only_error_line(proc)
  assert not workdir.exists()
