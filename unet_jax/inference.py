"""Loading a trained model from a workdir, and its jitted (optionally flip-TTA) prediction.

The one place evaluate and predict get a model from: config.json for the architecture, the
checkpoint's own parameter shapes for the input channels, orbax for the weights.
"""

import dataclasses
import functools
import json
import logging
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.sharding import Mesh

from unet_jax import checkpoints, models, optim, parallel, steps
from unet_jax.errors import WorkdirError

CANDIDATE_CHANNELS = (1, 3, 4, 2)  # Input channels tried against a checkpoint's shapes.


@dataclasses.dataclass
class TrainedModel:
  """A restored train state with what is needed to feed it."""

  config: ml_collections.ConfigDict
  state: steps.TrainState
  step: int
  input_channels: int
  mesh: Mesh

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


def _stored_param_shapes(step_dir: pathlib.Path):
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns about a missing metadata file.
  try:
    tree = ocp.StandardCheckpointer().metadata(step_dir / "state").item_metadata.tree
  finally:
    absl_logging.set_verbosity(verbosity)
  return jax.tree.map(lambda leaf: tuple(leaf.shape), tree["params"])


def infer_input_channels(model, config, step_dir: pathlib.Path) -> int:
  """The channel count whose initial parameters have the checkpoint's shapes."""
  stored = _stored_param_shapes(step_dir)
  height, width = config.image_size
  for channels in CANDIDATE_CHANNELS:
    sample = jnp.zeros((1, height, width, channels), jnp.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), sample)
    if jax.tree.map(lambda leaf: tuple(leaf.shape), shapes["params"]) == stored:
      return channels
  raise WorkdirError(f"the checkpoint in {step_dir} does not match config.json's model; "
                     "was config.json edited after training?")


def load(workdir, which: str = "best") -> TrainedModel:
  """The state of the best (or 'latest', or a step number) checkpoint of a training run."""
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
    if which == "latest":
      step = ckpts.latest_step()
    elif which == "best":
      step = ckpts.best_step() or ckpts.latest_step()
    elif str(which).isdigit() and int(which) in available:
      step = int(which)
    else:
      raise WorkdirError(f"checkpoint {which!r} not in {workdir}; use best, latest or one of "
                         f"the steps {available}")
    model = models.from_config(config)
    channels = infer_input_channels(model, config, ckpts.directory / str(step))
    mesh = parallel.make_mesh()
    tx = optim.make_optimizer(config, config.num_train_steps)
    sample = np.zeros((1, *config.image_size, channels), np.uint8)
    # Shapes only: initialising for real would compile the init for nothing.
    abstract = jax.eval_shape(lambda s: steps.create_train_state(model, tx, s, config.seed),
                              sample)
    replicated = parallel.replicated(mesh)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            abstract)
    state, _ = ckpts.restore(step, template)
  finally:
    ckpts.close()
  logging.info("loaded the checkpoint of step %d from %s (%d input channels)", step, workdir,
               channels)
  return TrainedModel(config, state, step, channels, mesh)


def _probabilities(state, images, flip: bool):
  """Probabilities (N, H, W, C); with `flip`, the mean with the mirrored pass on the device."""
  if not flip:
    return steps.predict_probabilities(state, images)
  both = steps.predict_probabilities(state, jnp.concatenate([images, images[:, :, ::-1]]))
  plain, mirrored = jnp.split(both, 2)
  return (plain + mirrored[:, :, ::-1]) / 2.0


def make_predict_fn(tta: str = "none"):
  """jit(state, uint8 images (N, H, W[, C])) -> probabilities; tta 'none' or 'flip'."""
  if tta not in ("none", "flip"):
    raise ValueError(f"unknown TTA {tta!r}; use none or flip")
  return jax.jit(functools.partial(_probabilities, flip=tta == "flip"))
