"""ONNX export (jax2onnx) of a trained model, batch size symbolic, checked in onnxruntime.

The graph maps `images` (batch, H, W, C) float32 in 0..255 to `probabilities` (sigmoid for
one class, softmax otherwise), as the StableHLO export does. The model is traced to a jaxpr
by JAX itself and jax2onnx converts its lax primitives: tracing the flax model under
jax2onnx's own flax/jax.image patches fails on this project's pooling and bilinear upsampling
with a symbolic batch. On the way, nested calls are inlined and the one primitive jax2onnx
lowers to an operator onnxruntime cannot run (an NHWC max-pool, which becomes a 4-D MaxPool)
is re-expressed.
"""

import contextlib
import logging
import pathlib

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np
from jax import lax

from unet_jax import inference, steps
from unet_jax.errors import UserError

OPSET = 17  # ONNX opset: run by onnxruntime >= 1.13 and TensorRT >= 8.6.
TOLERANCE = 1e-4  # Max |onnxruntime - checkpoint| accepted on the check batch.
# Call primitives whose body is evaluated in place (same values at inference): jax2onnx 0.17
# reads nested jits with jax.core.ClosedJaxpr, which JAX 0.12 removed.
INLINED = {"jit": "jaxpr", "pjit": "jaxpr", "custom_jvp_call": "call_jaxpr",
           "custom_vjp_call": "call_jaxpr"}


def require_packages():
  """Imports jax2onnx and onnxruntime, or says how to install them."""
  try:
    import jax2onnx  # pylint: disable=import-outside-toplevel
    import onnxruntime  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise UserError(f"--format onnx needs jax2onnx and onnxruntime ({e}); install them with "
                    "pip install 'unet_jax[onnx]'") from e
  return jax2onnx, onnxruntime


def _is_nhwc_max_pool(eqn) -> bool:
  """A max-pool over H and W only (flax's nn.max_pool on NHWC), without dilation."""
  if eqn.primitive is not lax.reduce_window_max_p or eqn.invars[0].aval.ndim != 4:
    return False
  p = eqn.params
  return (p["window_dimensions"][::3] == p["window_strides"][::3] == (1, 1)
          and p["padding"][::3] == ((0, 0), (0, 0))
          and set(p["base_dilation"]) == set(p["window_dilation"]) == {1})


def _max_pool_as_3d(x, window_dimensions, window_strides, padding, **_):
  """The same max-pool on (N * C, H, W): jax2onnx makes it a 3-D MaxPool onnxruntime runs."""
  n, h, w, c = x.shape
  y = jnp.transpose(x, (0, 3, 1, 2)).reshape(n * c, h, w)
  y = lax.reduce_window_max_p.bind(
      y, window_dimensions=(1, *window_dimensions[1:3]), window_strides=(1, *window_strides[1:3]),
      padding=((0, 0), *padding[1:3]), base_dilation=(1, 1, 1), window_dilation=(1, 1, 1))
  return jnp.transpose(y.reshape(n, c, *y.shape[1:]), (0, 2, 3, 1))


def _evaluate(jaxpr, consts, *args):
  """jax.core.eval_jaxpr, inlining INLINED calls and re-expressing NHWC max-pools."""
  env = {}
  read = lambda v: v.val if isinstance(v, jax_core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    values = [read(v) for v in eqn.invars]
    if _is_nhwc_max_pool(eqn):
      outs = [_max_pool_as_3d(*values, **eqn.params)]
    elif eqn.primitive.name in INLINED:
      body = eqn.params[INLINED[eqn.primitive.name]]
      outs = _evaluate(body.jaxpr, body.consts, *values)
    else:
      params = eqn.primitive.get_bind_params(eqn.params)
      if isinstance(params, tuple):  # Older JAX (0.8.1): (subfuns, params).
        subfuns, params = params
        values = [*subfuns, *values]
      outs = eqn.primitive.bind(*values, **params)
      outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def onnx_model(state: inference.InferenceState, input_spec: jax.ShapeDtypeStruct):
  """The onnx.ModelProto of predict_probabilities(state, images) for images like input_spec."""
  jax2onnx, _ = require_packages()
  closed = jax.make_jaxpr(lambda images: steps.predict_probabilities(state, images))(input_spec)
  forward = lambda images: _evaluate(closed.jaxpr, closed.consts, images)[0]
  with _quiet("onnx_ir"):  # It logs each untyped shape constant it leaves out of value_info.
    return jax2onnx.to_onnx(forward, [input_spec], model_name="unet_jax", opset=OPSET,
                            input_names=["images"], output_names=["probabilities"])


@contextlib.contextmanager
def _quiet(logger_name: str):
  logger = logging.getLogger(logger_name)
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def max_difference(path: pathlib.Path, trained: inference.TrainedModel, batch_size: int = 3):
  """Max |onnxruntime(file) - checkpoint| on a random batch."""
  _, onnxruntime = require_packages()
  session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  height, width = trained.image_size
  images = np.random.default_rng(0).uniform(
      0, 255, (batch_size, height, width, trained.input_channels)).astype(np.float32)
  expected = steps.predict_probabilities(trained.state, jnp.asarray(images))
  (actual,) = session.run(None, {"images": images})
  return float(np.max(np.abs(actual - np.asarray(expected))))
