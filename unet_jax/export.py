"""Exports a trained model as serialized StableHLO (jax.export), batch size left symbolic.

  python -m unet_jax.export --workdir runs/demo --output model.stablehlo

The artifact maps images (batch, H, W, C) float32 in 0..255 to probabilities (sigmoid for
one class, softmax otherwise) and runs without this package:
`jax.export.deserialize(open(path, 'rb').read()).call(images)`. After writing, the file is
reloaded and its outputs compared with the model's.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from unet_jax import cli, inference, steps
from unet_jax.errors import UserError


def exported_forward(trained: inference.TrainedModel, polymorphic_batch: bool = True):
  """The model's inference function, exported for any (or a fixed 1) batch size."""
  height, width = trained.image_size
  batch = jax.export.symbolic_shape("batch")[0] if polymorphic_batch else 1
  spec = jax.ShapeDtypeStruct((batch, height, width, trained.input_channels), jnp.float32)
  # XLA's kernels: an artifact must run where this package's native kernels are not loaded.
  model = trained.state.apply_fn.__self__.clone(conv_impl="xla")
  state = trained.state.replace(apply_fn=model.apply)
  forward = jax.jit(lambda images: steps.predict_probabilities(state, images))
  return jax.export.export(forward, platforms=("cpu", "cuda", "tpu"))(spec)


def check_reload(path: pathlib.Path, trained: inference.TrainedModel, batch_size: int = 3):
  """Max |exported - model| on a random batch, after reading the file back."""
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  height, width = trained.image_size
  images = np.random.default_rng(0).uniform(
      0, 255, (batch_size, height, width, trained.input_channels)).astype(np.float32)
  expected = steps.predict_probabilities(trained.state, jnp.asarray(images))
  return float(jnp.max(jnp.abs(exported.call(images) - expected)))


def export(workdir, output, which: str = "best", polymorphic_batch: bool = True) -> float:
  """Writes the artifact and returns the reload check's max difference."""
  trained = inference.load(workdir, which)
  output = pathlib.Path(output).expanduser()
  try:
    exported = exported_forward(trained, polymorphic_batch)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"cannot export with a symbolic batch ({e}); "
                    "rerun with --nopolymorphic_batch for batch size 1") from e
  tmp = output.with_name(output.name + ".tmp")
  tmp.write_bytes(exported.serialize())
  tmp.replace(output)
  difference = check_reload(output, trained, batch_size=3 if polymorphic_batch else 1)
  logging.info("wrote %s (%d bytes, step %d); reloaded: max |difference| %.2e", output,
               output.stat().st_size, trained.step, difference)
  if difference > 1e-5:
    raise UserError(f"the exported model in {output} differs from the checkpoint by "
                    f"{difference:.2e} (> 1e-5); please report this")
  return difference


def main(argv):
  cli.reject_extra_args(argv)
  with cli.exit_on_user_error():
    export(flags.FLAGS.workdir, flags.FLAGS.output, flags.FLAGS.checkpoint,
           flags.FLAGS.polymorphic_batch)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training run to export.", required=True)
  flags.DEFINE_string("output", None, "Path of the .stablehlo file to write.", required=True)
  flags.DEFINE_string("checkpoint", "best", "best, latest or a step number.")
  flags.DEFINE_bool("polymorphic_batch", True, "Leave the batch size symbolic.")
  cli.run(main)
