"""orbax checkpoints: the latest few plus the best by a validation metric, in one manager.

A checkpoint holds the train state and the grain iterator state together, so a resumed run
continues the same batch sequence.
"""

import logging
import pathlib

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from unet_jax import resilience


class Checkpoints:
  """Saves and restores (train state, data iterator) under `workdir/checkpoints`."""

  def __init__(self, workdir, *, max_to_keep: int, best_metric: str, best_mode: str):
    self.best_metric = best_metric
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(max_to_keep),
        checkpoint_managers.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                  reverse=best_mode == "min", n=1,
                                  keep_checkpoints_without_metrics=False),
    ])
    # Saves are asynchronous and atomic: written to a temporary directory, renamed when
    # complete. A run killed mid-save leaves the earlier checkpoints as they were, and the
    # next start removes the temporary leftovers.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy,
                                           best_fn=lambda metrics: metrics[best_metric],
                                           best_mode=best_mode, create=True,
                                           cleanup_tmp_directories=True)
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state, data_iterator, metrics: dict | None = None,
           progress: dict | None = None) -> None:
    """Starts an asynchronous save of the train state, the data iterator position and the
    run's progress record (best metric, early stopping); earlier checkpoints stay intact."""
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if progress is not None:
      args["progress"] = ocp.args.JsonSave(progress)
    self.manager.save(step, args=ocp.args.Composite(**args), metrics=metrics, force=True)
    if resilience.injected_fault("kill_during_save", step):  # Crash tests only.
      resilience.die_now()

  def restore(self, step: int, state_template, data_iterator=None):
    """Restores `step` into the shapes and shardings of `state_template`.

    Returns (state, data_iterator or None, progress dict or None).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    args = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    if (self.directory / str(step) / "progress").exists():
      args["progress"] = ocp.args.JsonRestore()
    restored = self.manager.restore(step, args=ocp.args.Composite(**args))
    logging.info("restored checkpoint of step %d from %s", step, self.directory)
    return (restored["state"], restored.get("data") if data_iterator is not None else None,
            restored.get("progress") if "progress" in args else None)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
