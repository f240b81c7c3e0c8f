"""Loading a trained model from a workdir, and its jitted (optionally flip-TTA) prediction.

The one place evaluate and predict get a model from: config.json for the architecture, the
checkpoint's own parameter shapes for the input channels, orbax for the weights.
"""

import dataclasses
import functools
import json
import logging
import pathlib
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.sharding import Mesh

from unet_jax import checkpoints, models, parallel, runtime, steps
from unet_jax.errors import WorkdirError

CANDIDATE_CHANNELS = (1, 3, 4, 2)  # Input channels tried against a checkpoint's shapes.


@flax.struct.dataclass
class InferenceState:
  """What prediction needs of a TrainState (apply_fn, params, batch_stats) and no more."""

  apply_fn: Callable = flax.struct.field(pytree_node=False)
  params: Any = None
  batch_stats: Any = None


@dataclasses.dataclass
class TrainedModel:
  """Restored weights with what is needed to feed them."""

  config: ml_collections.ConfigDict
  state: InferenceState
  step: int
  input_channels: int
  mesh: Mesh
  # An ensemble: `state` is a tuple of the members' states, whose probabilities are averaged;
  # members lists (workdir, step, averaged_steps) of each. Empty for a single run.
  members: tuple = ()
  # --checkpoint average:N: the steps whose weights were averaged (`step` is the last); an
  # ensemble's are in its members.
  averaged_steps: tuple = ()

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.config.image_size)

  @property
  def is_binary(self) -> bool:
    return self.config.num_classes == 1


def load_config(workdir) -> ml_collections.ConfigDict:
  """The resolved config a run saved as workdir/config.json."""
  path = pathlib.Path(workdir).expanduser() / "config.json"
  if not path.parent.is_dir():
    raise WorkdirError(f"workdir {path.parent} does not exist; pass the --workdir of a "
                       "training run")
  if not path.is_file():
    raise WorkdirError(f"{path} not found: {path.parent} is not a training workdir; pass the "
                       "--workdir that python -m unet_jax.main wrote")
  with open(path, encoding="utf-8") as f:
    return ml_collections.ConfigDict(json.load(f))


def saved_steps(workdir) -> list[int]:
  """Steps with a finished checkpoint under workdir/checkpoints."""
  directory = pathlib.Path(workdir).expanduser() / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _stored_param_shapes(state_dir: pathlib.Path):
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about a missing metadata file.
  try:
    tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
  finally:
    absl_logging.set_verbosity(verbosity)
  return jax.tree.map(lambda leaf: tuple(leaf.shape), tree["params"])


def _abstract_variables(model, config, channels: int):
  sample = jax.ShapeDtypeStruct((1, *config.image_size, channels), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), sample)


def infer_input_channels(model, config, state_dir: pathlib.Path) -> tuple[int, dict]:
  """The channel count whose initial parameters have the checkpoint's shapes, and those
  variables' shapes (each candidate traces the model: kept, not traced again)."""
  stored = _stored_param_shapes(state_dir)
  for channels in CANDIDATE_CHANNELS:
    abstract = _abstract_variables(model, config, channels)
    if jax.tree.map(lambda leaf: tuple(leaf.shape), abstract["params"]) == stored:
      return channels, abstract
  raise WorkdirError(f"the checkpoint in {state_dir} does not match config.json's model; "
                     "was config.json edited after training?")


def restore_variables(state_dir: pathlib.Path, abstract_variables: dict, mesh: Mesh) -> dict:
  """params and batch_stats of a saved TrainState, replicated over `mesh`.

  A partial restore: the optimizer state is never read (no memory for it), and fields added
  to TrainState later do not break loading older checkpoints.
  """
  item = {"params": abstract_variables["params"]}
  if abstract_variables.get("batch_stats"):
    item["batch_stats"] = abstract_variables["batch_stats"]
  replicated = parallel.replicated(mesh)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(
      sharding=replicated, global_shape=x.shape, dtype=x.dtype), item)
  return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))


CHECKPOINT_CHOICES = "best, latest, a step number, or average:N (the mean of the last N)"


def average_count(which: str) -> int:
  """N of 'average:N' (checkpoint averaging), 0 for best / latest / a step."""
  which = str(which)
  if not which.startswith("average:"):
    return 0
  count = which.removeprefix("average:")
  if not count.isdigit() or int(count) < 1:
    raise WorkdirError(f"--checkpoint={which!r}: average:N needs a whole N >= 1, e.g. average:3")
  return int(count)


def check_choice(which: str) -> None:
  """Raises unless `which` is best, latest, a step number or average:N."""
  if which not in ("best", "latest") and not str(which).isdigit() and not average_count(which):
    raise WorkdirError(f"--checkpoint={which!r}; use {CHECKPOINT_CHOICES}")


def checkpoint_label(which: str) -> str:
  """A file-name suffix for a checkpoint choice: '' for best (the default), '_latest',
  '_step600', '_average3'."""
  which = str(which)
  if which == "best":
    return ""
  if average_count(which):
    return f"_average{average_count(which)}"
  return f"_step{which}" if which.isdigit() else f"_{which}"


def _pick_steps(ckpts: checkpoints.Checkpoints, which: str, available: list[int],
                workdir) -> list[int]:
  """The checkpoint steps `which` names: one, or the last N for average:N."""
  count = average_count(which)
  if count:
    if count > len(available):
      raise WorkdirError(f"--checkpoint={which}: {workdir} keeps {len(available)} checkpoints "
                         f"({available}); average fewer, or train with "
                         f"--config.max_checkpoints={count}")
    return available[-count:]
  if which == "latest":
    return [ckpts.latest_step()]
  if which == "best":
    return [ckpts.best_step() or ckpts.latest_step()]
  if str(which).isdigit() and int(which) in available:
    return [int(which)]
  raise WorkdirError(f"checkpoint {which!r} not in {workdir}; use {CHECKPOINT_CHOICES}, with "
                     f"the steps {available}")


def average_variables(variables: list[dict]) -> dict:
  """The leaf-wise mean of several checkpoints' params and batch_stats (checkpoint
  averaging: the late snapshots of one run, a cheap ensemble in one model)."""
  if len(variables) == 1:
    return variables[0]
  return jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *variables)


def load(workdir, which: str = "best") -> TrainedModel:
  """The weights of the best (or 'latest', a step number, or the mean of the last N with
  'average:N') checkpoint of a training run."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  config = load_config(workdir)
  available = saved_steps(workdir)
  if not available:
    raise WorkdirError(f"workdir {workdir} has no checkpoints in {workdir / 'checkpoints'}; "
                       "train first (python -m unet_jax.main --workdir ...) or pass another "
                       "--workdir")
  ckpts = checkpoints.Checkpoints(workdir, max_to_keep=config.max_checkpoints,
                                  best_metric=config.best_metric, best_mode=config.best_mode)
  try:
    chosen = _pick_steps(ckpts, which, available, workdir)
  finally:
    ckpts.close()
  runtime.enable_compilation_cache(config.get("compilation_cache_dir", ""))
  model = models.from_config(config)
  state_dirs = [ckpts.directory / str(step) / "state" for step in chosen]
  channels, abstract = infer_input_channels(model, config, state_dirs[0])
  mesh = parallel.make_mesh()
  variables = average_variables([restore_variables(d, abstract, mesh) for d in state_dirs])
  logging.info("loaded the checkpoint%s of step%s %s from %s (%d input channels)",
               "s" * (len(chosen) > 1), "s" * (len(chosen) > 1), ", ".join(map(str, chosen)),
               workdir, channels)
  state = InferenceState(model.apply, variables["params"], variables.get("batch_stats", {}))
  averaged = tuple(chosen) if average_count(which) else ()
  return TrainedModel(config, state, chosen[-1], channels, mesh, averaged_steps=averaged)


def load_ensemble(workdirs, which: str = "best") -> TrainedModel:
  """One run, or several (e.g. the folds of a cross-validation) whose probabilities predict
  and evaluate average; they must share image size, classes and input channels."""
  workdirs = [workdirs] if isinstance(workdirs, (str, pathlib.Path)) else list(workdirs)
  runs = [load(w, which) for w in workdirs]
  if len(runs) == 1:
    return runs[0]
  first = runs[0]
  for workdir, run in zip(workdirs[1:], runs[1:]):
    theirs = (run.image_size, run.config.num_classes, run.input_channels)
    ours = (first.image_size, first.config.num_classes, first.input_channels)
    if theirs != ours:
      raise WorkdirError(f"{workdir} predicts (image size, classes, channels) {theirs} but "
                         f"{workdirs[0]} {ours}; ensemble only runs trained for the same task")
  members = tuple((str(w), r.step, r.averaged_steps) for w, r in zip(workdirs, runs))
  logging.info("ensemble of %d runs: %s", len(runs), ", ".join(
      f"{w} (step {step}{f', averaged over {len(steps)}' if steps else ''})"
      for w, step, steps in members))
  return dataclasses.replace(first, state=tuple(r.state for r in runs), members=members,
                             averaged_steps=())


def _single_probabilities(state, images, flip: bool):
  """Probabilities (N, H, W, C); with `flip`, the mean with the mirrored pass on the device."""
  if not flip:
    return steps.predict_probabilities(state, images)
  both = steps.predict_probabilities(state, jnp.concatenate([images, images[:, :, ::-1]]))
  plain, mirrored = jnp.split(both, 2)
  return (plain + mirrored[:, :, ::-1]) / 2.0


def probabilities(state, images, flip: bool = False):
  """Probabilities of a run, or the mean of an ensemble's (a tuple of states)."""
  if not isinstance(state, tuple):
    return _single_probabilities(state, images, flip)
  return sum(_single_probabilities(s, images, flip) for s in state) / len(state)


def averaged_logits(state, images, flip: bool = False):
  """Logits whose sigmoid/softmax are the averaged probabilities (for loss and metrics); a
  single run without TTA gives its own logits unchanged."""
  if not flip and not isinstance(state, tuple):
    return steps.model_logits(state, images)
  averaged = jnp.clip(probabilities(state, images, flip), 1e-7, 1 - 1e-7)
  if averaged.shape[-1] == 1:
    return jnp.log(averaged) - jnp.log1p(-averaged)
  return jnp.log(averaged)


def make_predict_fn(tta: str = "none"):
  """jit(state, uint8 images (N, H, W[, C])) -> probabilities; tta 'none' or 'flip'; `state`
  may be an ensemble's tuple."""
  if tta not in ("none", "flip"):
    raise ValueError(f"unknown TTA {tta!r}; use none or flip")
  return jax.jit(functools.partial(probabilities, flip=tta == "flip"))
