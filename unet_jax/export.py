"""Exports a trained model as serialized StableHLO (jax.export) or ONNX, batch size symbolic.

  python -m unet_jax.export --workdir runs/demo --output model.stablehlo
  python -m unet_jax.export --workdir runs/demo --output model.onnx  # --format onnx

The artifact maps images (batch, H, W, C) float32 in 0..255 to probabilities (sigmoid for
one class, softmax otherwise) and runs without this package: StableHLO with
`jax.export.deserialize(open(path, 'rb').read()).call(images)`, ONNX in onnxruntime (needs
`pip install 'unet_jax[onnx]'` to export). --format defaults to onnx for a .onnx output,
else stablehlo. The file is written next to the output, read back and compared with the
checkpoint's outputs, and only then renamed to the output path. The artifact computes in
float32 whatever dtype the run trained in (bfloat16 compute is a training-speed choice; the
weights are float32), so it matches the checkpoint evaluated in float32 and runs on any device.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from unet_jax import cli, inference, onnx_export, steps
from unet_jax.errors import UserError
from unet_jax.ops import layers

FORMATS = ("stablehlo", "onnx")
TOLERANCE = {"stablehlo": 1e-5, "onnx": onnx_export.TOLERANCE}  # Max |file - checkpoint|.


def input_spec(trained: inference.TrainedModel, polymorphic_batch: bool = True):
  """(batch, H, W, C) float32, batch symbolic or 1."""
  height, width = trained.image_size
  batch = jax.export.symbolic_shape("batch")[0] if polymorphic_batch else 1
  return jax.ShapeDtypeStruct((batch, height, width, trained.input_channels), jnp.float32)


def in_float32(trained: inference.TrainedModel) -> inference.TrainedModel:
  """The run's model computing in float32 (the exported function, and the reference)."""
  model = trained.state.apply_fn.__self__.clone(dtype=jnp.float32)
  return dataclasses.replace(trained, state=trained.state.replace(apply_fn=model.apply))


def xla_state(trained: inference.TrainedModel) -> inference.InferenceState:
  """The weights with XLA's kernels and flax's own layers (conv_impl 'xla_autodiff', same
  math): an artifact must run where this package's native kernels (custom calls) are not
  loaded, and converters know flax's layers, not ops.xla_vjp's custom VJPs."""
  model = trained.state.apply_fn.__self__.clone(conv_impl=layers.XLA_AUTODIFF)
  return trained.state.replace(apply_fn=model.apply)


def exported_forward(trained: inference.TrainedModel, polymorphic_batch: bool = True):
  """The model's inference function, exported for any (or a fixed 1) batch size."""
  state = xla_state(trained)
  forward = jax.jit(lambda images: steps.predict_probabilities(state, images))
  return jax.export.export(forward, platforms=("cpu", "cuda", "tpu"))(
      input_spec(trained, polymorphic_batch))


def check_reload(path: pathlib.Path, trained: inference.TrainedModel, batch_size: int = 3):
  """Max |exported - model| on a random batch, after reading the file back."""
  exported = jax.export.deserialize(bytearray(path.read_bytes()))
  height, width = trained.image_size
  images = np.random.default_rng(0).uniform(
      0, 255, (batch_size, height, width, trained.input_channels)).astype(np.float32)
  expected = steps.predict_probabilities(trained.state, jnp.asarray(images))
  return float(jnp.max(jnp.abs(exported.call(images) - expected)))


def output_format(output, requested: str | None = None) -> str:
  """`requested`, or onnx for a .onnx output and stablehlo otherwise."""
  if requested is None:
    return "onnx" if pathlib.Path(output).suffix.lower() == ".onnx" else "stablehlo"
  if requested not in FORMATS:
    raise UserError(f"--format={requested} is not one of {', '.join(FORMATS)}; pass one of them")
  return requested


def serialize(trained: inference.TrainedModel, fmt: str, polymorphic_batch: bool) -> bytes:
  """The artifact's bytes in format `fmt`."""
  try:
    if fmt == "onnx":
      return onnx_export.onnx_model(xla_state(trained), input_spec(trained, polymorphic_batch)
                                    ).SerializeToString()
    return exported_forward(trained, polymorphic_batch).serialize()
  except Exception as e:  # pylint: disable=broad-except
    fix = ("rerun with --nopolymorphic_batch for batch size 1" if polymorphic_batch
           else "please report this")
    raise UserError(f"cannot export to {fmt} ({type(e).__name__}: {e}); {fix}") from e


def export(workdir, output, which: str = "best", polymorphic_batch: bool = True,
           fmt: str | None = None) -> float:
  """Writes the artifact and returns the reload check's max difference."""
  output = pathlib.Path(output).expanduser()
  fmt = output_format(output, fmt)
  if not output.parent.is_dir():
    raise UserError(f"the folder of --output {output} does not exist; create it or pass "
                    "another path")
  if fmt == "onnx":
    onnx_export.require_packages()  # A missing package is one line, before any work.
  trained = in_float32(inference.load(workdir, which))
  data = serialize(trained, fmt, polymorphic_batch)
  tmp = output.with_name(output.name + ".tmp")
  try:
    tmp.write_bytes(data)
    check = onnx_export.max_difference if fmt == "onnx" else check_reload
    difference = check(tmp, trained, batch_size=3 if polymorphic_batch else 1)
    if not difference <= TOLERANCE[fmt]:
      raise UserError(f"the exported {fmt} model differs from the checkpoint by "
                      f"{difference:.2e} (> {TOLERANCE[fmt]:.0e}); {output} was not "
                      "written; please report this")
    tmp.replace(output)
  finally:
    tmp.unlink(missing_ok=True)
  logging.info("wrote %s (%s, %d bytes, step %d); reloaded: max |difference| %.2e", output, fmt,
               output.stat().st_size, trained.step, difference)
  return difference


def main(argv):
  cli.reject_extra_args(argv)
  with cli.exit_on_user_error():
    export(flags.FLAGS.workdir, flags.FLAGS.output, flags.FLAGS.checkpoint,
           flags.FLAGS.polymorphic_batch, flags.FLAGS.format)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training run to export.", required=True)
  flags.DEFINE_string("output", None, "Path of the .stablehlo or .onnx file to write.",
                      required=True)
  flags.DEFINE_enum("format", None, FORMATS,
                    "Artifact format; default: onnx for a .onnx --output, else stablehlo.")
  flags.DEFINE_string("checkpoint", "best", f"Which weights: {inference.CHECKPOINT_CHOICES}.")
  flags.DEFINE_bool("polymorphic_batch", True, "Leave the batch size symbolic.")
  cli.run(main)
