"""One end-to-end training run through the project's own trainer, and where its time goes.

`run` (in a process of its own, started by benchmarks/gpu/gpu_check.py):
1. trains `config` with unet_jax.train.train_and_evaluate in a fresh workdir (the real grain
   pipeline, evaluation, checkpoints, plots), TGS prepared first from its raw download;
2. reads the step time with the input pipeline off metrics.jsonl: the trainer measures it
   between its log steps, evaluations excluded (logs.TrainLogger);
3. times the same jitted step again on one batch held on the device, under the trainer's
   bound of steps in flight: the step time without the input pipeline; then fed by the
   trainer's iterator, batches put on the device inline and 2 ahead by background threads;
4. times the grain iterator alone (no device work): the batches per second it delivers, as
   configured (threads) and in one worker process per core.
The device waits for data for 1 - without / with of the step time.
"""

import collections
import pathlib
import shutil
import statistics
import time

def make_config(dataset: str, steps: int, dtype: str, tiny: bool, data_dir=None):
  """configs/<dataset>.py for `steps` steps in `dtype`; tiny: a 4-channel depth-2 U-Net."""
  from configs import synthetic, tgs  # pylint: disable=import-outside-toplevel
  config = (synthetic if dataset == "synthetic" else tgs).get_config()
  config.num_train_steps = steps
  config.eval_every_steps = max(steps // (2 if tiny else 3), 1)  # A short validation curve.
  config.log_every_steps = max(min(25, steps // 6), 1)  # Windows of the step-time measure.
  config.model.dtype = dtype
  if data_dir is not None:
    config.data_dir = str(data_dir)
  if tiny:
    config.model.features, config.model.depth = 4, 2
    config.batch_size, config.eval_batch_size = 8, 16
    if dataset == "synthetic":
      config.image_size = (32, 32)
      config.synthetic.num_train, config.synthetic.num_val = 64, 32
  return config


def prepare_data(dataset: str, tgs_dir, root: pathlib.Path):
  """The data_dir `dataset` trains from: TGS prepared from its download into root/tfds; None
  for the synthetic data (generated)."""
  if dataset != "tgs":
    return None
  from unet_jax.data import prepare  # pylint: disable=import-outside-toplevel
  prepare.prepare("tgs", tgs_dir, root / "tfds")
  return root / "tfds"


def _train_records(workdir: pathlib.Path):
  from unet_jax import plots  # pylint: disable=import-outside-toplevel
  records = plots.read_metrics(workdir / "metrics.jsonl")
  return ([r for r in records if r["split"] == "train"],
          [r for r in records if r["split"] == "val"])


def loop_step_ms(config, steps: int) -> dict:
  """Milliseconds a step of the trainer's jitted step, `steps` times under its bound of steps
  in flight, fed three ways: 'device_only', one batch held on the device (the step time when
  data costs nothing); 'put_inline' and 'put_ahead', the trainer's iterator with batches put on
  the device inline or 2 ahead by background threads (config.device_prefetch 0 and 2)."""
  import itertools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel,protected-access
  from unet_jax import data, parallel, steps as steps_lib, train
  mesh = parallel.make_mesh()
  source = data.load_split(config, "train")
  state = train._initial_state(config, mesh, source)
  train_step, _, _ = steps_lib.jit_steps(config)  # The trainer's (cached) jitted step.

  def feed(device_prefetch):
    fed = config.copy_and_resolve_references()
    fed.device_prefetch = device_prefetch or 0
    batches = train._make_train_iterator(fed, source, mesh)
    return itertools.repeat(next(batches)) if device_prefetch is None else batches

  times = {}
  for name, device_prefetch in (("device_only", None), ("put_inline", 0), ("put_ahead", 2)):
    batches = feed(device_prefetch)
    for _ in range(3):  # Compiles once; starts the iterator's threads and worker processes.
      state, metrics = train_step(state, next(batches))
    jax.block_until_ready(metrics)
    in_flight = collections.deque()
    start = time.perf_counter()
    for _ in range(steps):
      batch = next(batches)
      while len(in_flight) >= train.MAX_STEPS_IN_FLIGHT:
        jax.block_until_ready(in_flight.popleft())
      state, metrics = train_step(state, batch)
      in_flight.append(metrics)
    jax.block_until_ready((state, metrics))
    times[name] = 1e3 * (time.perf_counter() - start) / steps
  return times


def pipeline_only_ms(config, batches: int) -> float:
  """Milliseconds per batch of the trainer's grain iterator alone, after a warm-up."""
  from unet_jax import data, train  # pylint: disable=import-outside-toplevel
  iterator = train._make_train_iterator(config, data.load_split(config, "train"))  # pylint: disable=protected-access
  for _ in range(min(10, batches)):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return 1e3 * (time.perf_counter() - start) / batches


def run(dataset: str, steps: int, dtype: str, tiny: bool, workdir, tgs_dir=None,
        plots_dir=None) -> dict:
  """Trains, then times the step without the pipeline and the pipeline alone; the results."""
  import jax  # pylint: disable=import-outside-toplevel
  from unet_jax import train  # pylint: disable=import-outside-toplevel
  from unet_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  start = time.perf_counter()
  data_dir = prepare_data(dataset, tgs_dir, workdir)
  prepare_s = time.perf_counter() - start if data_dir else None
  config = make_config(dataset, steps, dtype, tiny, data_dir)
  # A fresh persistent cache: the run compiles cold and writes it as a user's first run does.
  config.compilation_cache_dir = str(workdir / "xla_cache")
  start = time.perf_counter()
  scores = train.train_and_evaluate(config, workdir / "run")
  train_wall_s = time.perf_counter() - start
  train_records, val_records = _train_records(workdir / "run")
  windows = [r["step_time_ms"] for r in train_records if "step_time_ms" in r]
  with_pipeline_ms = statistics.median(windows) if windows else None
  loop_ms = loop_step_ms(config, 5 if tiny else max(50, min(steps, 200)))
  without_ms = loop_ms["device_only"]
  # The trainer's pipeline in threads, and in worker processes, one per core (at most 16).
  in_threads = config.copy_and_resolve_references()
  in_threads.num_workers = 0
  pipeline_ms = pipeline_only_ms(in_threads, 20 if tiny else 200)
  in_processes = config.copy_and_resolve_references()
  in_processes.num_workers = pipeline.default_threads()
  pipeline_processes_ms = pipeline_only_ms(in_processes, 20 if tiny else 200)
  cache = pathlib.Path(config.compilation_cache_dir)
  if plots_dir is not None:
    shutil.copyfile(workdir / "run" / "plots" / "loss.png",
                    pathlib.Path(plots_dir) / f"e2e_{dataset}_loss.png")
  return {
      "dataset": dataset, "steps": steps, "dtype": dtype, "batch_size": config.batch_size,
      "image_size": list(config.image_size),
      "model": {k: config.model[k] for k in ("features", "depth", "squeeze_excitation",
                                             "upsample_impl", "conv_impl")},
      "prepare_s": prepare_s, "train_wall_s": train_wall_s,
      "final_scores": {k: float(v) for k, v in scores.items() if not k.startswith("class")},
      "val_curve": [{k: v for k, v in r.items() if k in ("step", "loss", "dice", "iou",
                                                         "tgs_map")} for r in val_records],
      "step_ms_with_pipeline": with_pipeline_ms, "step_ms_windows": windows,
      "step_ms_device_only": without_ms,
      "step_ms_loop_put_inline": loop_ms["put_inline"],
      "step_ms_loop_put_ahead": loop_ms["put_ahead"],
      "data_wait_share": (max(0.0, 1.0 - without_ms / with_pipeline_ms)
                          if with_pipeline_ms else None),
      "pipeline_only_ms_per_batch": pipeline_ms,
      "pipeline_only_img_per_s": 1e3 * config.batch_size / pipeline_ms,
      "pipeline_to_step_ratio": without_ms / pipeline_ms,
      "pipeline_processes_img_per_s": 1e3 * config.batch_size / pipeline_processes_ms,
      "pipeline_processes": in_processes.num_workers,
      "grain": {"num_workers": pipeline.resolve_workers(config.num_workers,
                                                        jax.default_backend()),
                "prefetch": config.prefetch,
                "device_prefetch": pipeline.resolve_device_prefetch(config.device_prefetch,
                                                                    jax.default_backend()),
                "threads": pipeline.default_threads()},
      "compilation_cache_files": len(list(cache.iterdir())) if cache.is_dir() else 0,
      "autotune_cache_written": (cache / "xla_gpu_per_fusion_autotune_cache_dir").is_dir(),
  }
