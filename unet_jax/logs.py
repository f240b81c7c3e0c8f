"""Train and validation records: workdir/metrics.jsonl and TensorBoard scalars (process 0)."""

import json
import pathlib
import time

import jax

from unet_jax import parallel, tensorboard


class MetricsLog:
  """Appends one JSON record per line to workdir/metrics.jsonl (process 0 only), and the same
  values as TensorBoard scalars `split/name`."""

  def __init__(self, path: pathlib.Path, board: tensorboard.TensorBoard | None = None):
    self.path = path
    self.enabled = jax.process_index() == 0
    self.board = board or tensorboard.TensorBoard(path.parent / "tensorboard", enabled=False)

  def write(self, step: int, split: str, values: dict) -> None:
    if self.enabled:
      values = {k: float(v) for k, v in values.items()}
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
      self.board.scalars(step, split, values)

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` (written by a run that died before its next checkpoint)."""
    self.board.truncate_after(step)
    if self.enabled and self.path.exists():
      lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
      kept = [l for l in lines if l.strip() and json.loads(l)["step"] <= step]
      tmp = self.path.with_suffix(".tmp")
      tmp.write_text("".join(kept), encoding="utf-8")
      tmp.replace(self.path)


class TrainLogger:
  """Writes train metrics one step late, so reading them never stalls the device.

  Throughput is measured between two reads: the steps completed over the wall time.
  """

  def __init__(self, log: MetricsLog, bar, batch_size: int, learning_rate=None):
    self.log, self.bar, self.batch_size = log, bar, batch_size
    self.learning_rate = learning_rate  # (step, values) -> the rate that step used.
    self.mark = None  # (step, time) of the last point where the device was known idle.

  def synced(self, step: int) -> None:
    """Records that every step up to `step` has finished now (e.g. after an eval)."""
    self.mark = (step, time.perf_counter())

  def write(self, step: int, metrics) -> dict:
    values = parallel.to_host(metrics)  # Step `step` is done; the next one is queued.
    now = time.perf_counter()
    if self.mark is not None and step > self.mark[0]:
      step_time = (now - self.mark[1]) / (step - self.mark[0])
      values.update(images_per_second=self.batch_size / step_time, step_time_ms=step_time * 1e3)
    self.mark = (step, now)
    if self.learning_rate is not None:
      values["learning_rate"] = self.learning_rate(step, values)
    self.log.write(step, "train", values)
    postfix = {"loss": f"{values['loss']:.4f}"}
    if "images_per_second" in values:
      postfix["img/s"] = f"{values['images_per_second']:.0f}"
    self.bar.set_postfix(postfix)  # The full record is in metrics.jsonl.
    return values
