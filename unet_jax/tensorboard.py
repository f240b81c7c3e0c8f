"""TensorBoard event files under workdir/tensorboard, written by process 0 without TensorFlow.

Uses TensorBoard's own event-file writer and protos (what torch.utils.tensorboard uses), so
`tensorboard --logdir runs/` shows a run live. A resumed run first drops the events past its
checkpoint, as MetricsLog does, so no step appears twice.
"""

import logging
import pathlib
import time

import jax
from PIL import Image
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer import event_file_writer, record_writer

EVENTS = "*tfevents*"  # TensorBoard reads the files whose name holds 'tfevents'.
# Readers take a run's files in name order; a writer's name starts with its start time.
TRUNCATED = "events.out.tfevents.0000000000.truncated"
_COLORSPACES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def read_events(path: pathlib.Path):
  """(raw bytes, Event) of each complete record of one event file, in order."""
  for raw in event_file_loader.RawEventFileLoader(str(path)).Load():
    yield raw, event_pb2.Event.FromString(raw)


def _key(event: event_pb2.Event):
  return event.step, tuple(sorted(v.tag for v in event.summary.value))


def truncate_event_files(logdir: pathlib.Path, step: int) -> None:
  """Rewrites the event files of `logdir` as one, keeping the summaries up to `step` (the
  last of any repeated (step, tags)), named to be read before any file written later."""
  files = sorted(logdir.glob(EVENTS))
  if not files:
    return
  kept = {}
  for path in files:
    for raw, event in read_events(path):
      if event.HasField("summary") and event.step <= step:
        kept.pop(_key(event), None)
        kept[_key(event)] = raw
  header = event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2")
  tmp = logdir / "truncating.tmp"
  with open(tmp, "wb") as f:
    writer = record_writer.RecordWriter(f)
    for raw in [header.SerializeToString(), *kept.values()]:
      writer.write(raw)
  tmp.replace(logdir / TRUNCATED)
  for path in files:
    if path.name != TRUNCATED:
      path.unlink()
  logging.info("tensorboard: kept %d event(s) up to step %d in %s", len(kept), step, TRUNCATED)


class TensorBoard:
  """Scalars and images for TensorBoard; a no-op when disabled or not process 0."""

  def __init__(self, logdir: pathlib.Path, enabled: bool = True):
    self.logdir = pathlib.Path(logdir)
    self.enabled = enabled and jax.process_index() == 0
    self._writer = None  # Opened at the first event, after any truncation.

  def _write(self, event: event_pb2.Event) -> None:
    if self._writer is None:
      self.logdir.mkdir(parents=True, exist_ok=True)
      self._writer = event_file_writer.EventFileWriter(str(self.logdir), flush_secs=10)
    self._writer.add_event(event)  # Written by the writer's thread: no wait in the loop.

  def flush(self) -> None:
    """Puts every event on disk (before a checkpoint, so a resume lacks none of its step)."""
    if self._writer is not None:
      self._writer.flush()

  def scalars(self, step: int, prefix: str, values: dict) -> None:
    """One event holding `prefix/name` = value for each entry of `values`."""
    if self.enabled:
      summary = summary_pb2.Summary(value=[
          summary_pb2.Summary.Value(tag=f"{prefix}/{name}", simple_value=float(value))
          for name, value in values.items()])
      self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def image(self, step: int, tag: str, png_path: pathlib.Path) -> None:
    """The PNG file at `png_path` as image `tag` (stored as is, no re-encoding)."""
    if not self.enabled:
      return
    data = pathlib.Path(png_path).read_bytes()
    with Image.open(png_path) as png:
      width, height, mode = png.width, png.height, png.mode
    image = summary_pb2.Summary.Image(height=height, width=width,
                                      colorspace=_COLORSPACES.get(mode, 3),
                                      encoded_image_string=data)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])
    self._write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

  def truncate_after(self, step: int) -> None:
    """Drops events past `step` (written by a run that died before its next checkpoint)."""
    if self.enabled and self._writer is None and self.logdir.is_dir():
      truncate_event_files(self.logdir, step)

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
