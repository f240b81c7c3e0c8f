"""The train steps being timed, one builder per variant, and the worker that hosts one.

Each variant runs in its own spawned process so that its peak memory is its own and the two
frameworks' thread pools never share an address space. Both sides time the same step on the
same float batch: x / 127.5 - 1, the U-Net in train mode (BatchNorm batch statistics),
sigmoid BCE-with-logits averaged over pixels, backward, Adam(lr=1e-3, eps=1e-8).
Variants run with glibc's default malloc (training's default, config.host_malloc='system')
except the `*_reuse_malloc` ones: unet_jax.host_memory's 'reuse' settings, for both frameworks.
"""

import contextlib
import os
import shutil
import tempfile
import time
import traceback

from unet_jax import host_memory

VARIANTS = {
    # name: (framework, label, options)
    "jax_fp32": ("jax", "JAX fp32 (XLA kernels)", {"bf16": False, "conv_impl": "xla"}),
    "jax_bf16": ("jax", "JAX bf16 compute (XLA kernels)", {"bf16": True, "conv_impl": "xla"}),
    # The same step with the train state in the layouts XLA picks for it (Layout.AUTO): on a
    # GPU, cuDNN's NHWC convolutions want OHWI filters, and with the default (HWIO, row-major)
    # state the second H200 run's optimized HLO transposed every large kernel, its gradient and
    # Adam's two moments to OHWI and back each step (~0.6 ms of the classic preset's 21 ms).
    "jax_bf16_auto_layouts": ("jax", "JAX bf16 compute, state in XLA-chosen layouts",
                              {"bf16": True, "conv_impl": "xla", "auto_layouts": True}),
    # The bf16 step as the first GPU run (2026-12-04) timed it: up-convolution as a matmul +
    # depth-to-space, flax's BatchNorm and max-pool differentiated by JAX, a float32 conv head.
    "jax_bf16_first_gpu_run": ("jax", "JAX bf16, first GPU run's step (XLA kernels)",
                               {"bf16": True, "conv_impl": "xla_autodiff",
                                "upsample_impl": "matmul"}),
    # unet_jax.ops: convolutions on oneDNN, BatchNorm + ReLU and max-pool on native kernels.
    "jax_onednn_fp32": ("jax", "JAX fp32, oneDNN kernels", {"bf16": False,
                                                             "conv_impl": "onednn"}),
    "jax_onednn_bf16": ("jax", "JAX bf16 compute, oneDNN kernels", {"bf16": True,
                                                                     "conv_impl": "onednn"}),
    # The same fp32 model with the up-convolutions as nn.ConvTranspose (the pre-issue-6 path).
    "jax_fp32_convtranspose": ("jax", "JAX fp32, ConvTranspose up-conv",
                               {"bf16": False, "upsample_impl": "conv_transpose",
                                "conv_impl": "xla"}),
    # The same fp32 model with config.host_malloc='reuse'.
    "jax_fp32_reuse_malloc": ("jax", "JAX fp32, host_malloc=reuse",
                              {"bf16": False, "malloc": "reuse", "conv_impl": "xla"}),
    # fp32 on oneDNN with reuse: what configs/tgs.py runs where bf16 is not native (AVX2).
    "jax_onednn_fp32_reuse_malloc": ("jax", "JAX fp32, oneDNN kernels, reuse malloc",
                                     {"bf16": False, "conv_impl": "onednn", "malloc": "reuse"}),
    "jax_onednn_bf16_reuse_malloc": ("jax", "JAX bf16 compute, oneDNN kernels, reuse malloc",
                                     {"bf16": True, "conv_impl": "onednn", "malloc": "reuse"}),
    # The bf16 oneDNN model with Winograd F(2x2,3x3) for every 3x3 convolution, and with the
    # per-layer measured choice (conv_algo='auto': unet_jax.ops.winograd).
    "jax_onednn_bf16_winograd": ("jax", "JAX bf16, oneDNN kernels, Winograd every 3x3",
                                 {"bf16": True, "conv_impl": "onednn", "conv_algo": "winograd"}),
    "jax_onednn_bf16_auto_algo": ("jax", "JAX bf16, oneDNN kernels, conv_algo=auto",
                                  {"bf16": True, "conv_impl": "onednn", "conv_algo": "auto"}),
    "jax_onednn_bf16_auto_algo_reuse_malloc": ("jax", "JAX bf16, oneDNN kernels, conv_algo=auto, "
                                               "reuse malloc",
                                               {"bf16": True, "conv_impl": "onednn",
                                                "conv_algo": "auto", "malloc": "reuse"}),
    # The same choice in float32 (CPUs without native bf16, e.g. AVX2: the float32 kernels).
    "jax_onednn_fp32_auto_algo_reuse_malloc": ("jax", "JAX fp32, oneDNN kernels, conv_algo=auto, "
                                               "reuse malloc",
                                               {"bf16": False, "conv_impl": "onednn",
                                                "conv_algo": "auto", "malloc": "reuse"}),
    "torch_eager_nchw": ("torch", "PyTorch eager NCHW fp32", {}),
    "torch_eager_cl": ("torch", "PyTorch eager channels_last fp32", {"channels_last": True}),
    "torch_autocast_bf16_cl": ("torch", "PyTorch autocast bf16 channels_last",
                               {"channels_last": True, "autocast": True}),
    "torch_compile": ("torch", "PyTorch torch.compile fp32 channels_last",
                      {"channels_last": True, "compile": True}),
    "torch_compile_bf16": ("torch", "PyTorch torch.compile autocast bf16 channels_last",
                           {"channels_last": True, "autocast": True, "compile": True}),
    "torch_eager_cl_reuse_malloc": ("torch", "PyTorch eager channels_last fp32, reuse malloc",
                                    {"channels_last": True, "malloc": "reuse"}),
    "torch_autocast_bf16_cl_reuse_malloc": ("torch", "PyTorch autocast bf16 channels_last, "
                                            "reuse malloc",
                                            {"channels_last": True, "autocast": True,
                                             "malloc": "reuse"}),
}
LEARNING_RATE = 1e-3


def _rss_mib(field: str) -> float:
  """VmRSS / VmHWM of this process in MiB (Linux)."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def _batch(spec):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(spec["seed"])
  shape = (spec["batch"], spec["height"], spec["width"])
  images = rng.uniform(0, 255, shape + (spec["in_channels"],)).astype(np.float32)
  masks = (rng.uniform(size=shape) > 0.5).astype(np.uint8)
  return images, masks


def _model_kwargs(spec):
  keys = ("features", "depth", "dropout", "norm", "upsample", "padding")
  return {key: spec[key] for key in keys}


def build_jax(spec, bf16: bool, upsample_impl: str = "auto", conv_impl: str = "xla",
              conv_algo: str = "direct", keep_hlo: bool = False, auto_layouts: bool = False):
  """The project's own train step (unet_jax.steps.train_step), jitted with donation;
  keep_hlo: info['optimized_hlo'] holds the compiled step's HLO text; auto_layouts: the
  state's device layouts are XLA's choice (compile_auto_layouts)."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import optax
  from configs import default
  from unet_jax import losses, runtime, steps, train
  from unet_jax.models import UNet

  runtime.configure_cpu_dispatch(default.get_config().cpu_async_dispatch)  # As the trainer does.

  model = UNet(num_classes=1, dtype=jnp.bfloat16 if bf16 else jnp.float32,
               upsample_impl=upsample_impl, conv_impl=conv_impl, conv_algo=conv_algo,
               **_model_kwargs(spec))
  images, masks = _batch(spec)
  batch = jax.device_put({"image": images, "mask": masks})
  state = steps.create_train_state(model, optax.adam(LEARNING_RATE, eps=1e-8), images,
                                   spec["seed"])
  train_fn = functools.partial(steps.train_step, loss_fn=losses.sigmoid_bce, ignore_index=None)
  start = time.perf_counter()
  if auto_layouts:
    compiled, state, info = compile_auto_layouts(train_fn, state, batch)
  else:
    compiled, info = jax.jit(train_fn, donate_argnums=0).lower(state, batch).compile(), {}
  info["compile_s"] = time.perf_counter() - start
  if keep_hlo:
    info["optimized_hlo"] = compiled.as_text()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  info["xla_flops_per_step"] = float(cost.get("flops", float("nan"))) if cost else None
  memory = compiled.memory_analysis()
  if memory is not None:
    info["xla_temp_mib"] = memory.temp_size_in_bytes / 2**20
  device = jax.devices()[0]
  info["device_name"] = f"{device.platform}:{device.device_kind}"
  holder = {"state": state}

  def step(count: int):
    state = holder["state"]
    for _ in range(count):
      state, _ = compiled(state, batch)
    holder["state"] = jax.block_until_ready(state)

  def peak_memory_mib():
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    return None

  return step, peak_memory_mib, info


def compile_auto_layouts(train_fn, state, batch):
  """`train_fn(state, batch)` jitted with donation, compiled with the state's layouts left to
  XLA, in and out (Layout.AUTO); the state put in them; info on how many state arrays left
  the default (row-major) layout. Where XLA picks other layouts for the new state than for
  the old, a second compile pins both to the input's, so each output feeds the next step."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.layout import Format, Layout  # pylint: disable=import-outside-toplevel
  batch_formats = jax.tree.map(lambda array: array.format, batch)
  auto = jax.tree.map(lambda _: Format(Layout.AUTO), state)
  compiled = jax.jit(train_fn, in_shardings=(auto, batch_formats), out_shardings=(auto, None),
                     donate_argnums=0).lower(state, batch).compile()
  chosen = compiled.input_formats[0][0]
  recompiled = jax.tree.leaves(compiled.output_formats[0]) != jax.tree.leaves(chosen)
  if recompiled:
    compiled = jax.jit(train_fn, in_shardings=(chosen, batch_formats),
                       out_shardings=(chosen, None), donate_argnums=0).lower(
                           state, batch).compile()
  arrays = jax.tree.leaves(state)
  moved = [array.size for format_, array in zip(jax.tree.leaves(chosen), arrays)
           if format_.layout.major_to_minor != tuple(range(array.ndim))]
  info = {"auto_layouts": {"state_arrays": len(arrays),
                           "non_default_layout": len(moved), "non_default_elements": sum(moved),
                           "recompiled_for_output": recompiled}}
  return compiled, jax.device_put(state, chosen), info


def build_torch(spec, channels_last=False, autocast=False, compile=False):  # pylint: disable=redefined-builtin
  """An eager / autocast / torch.compile'd step of the torch twin (benchmarks.torch_reference)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F
  from benchmarks import torch_reference

  cuda = torch.cuda.is_available()
  device = torch.device("cuda" if cuda else "cpu")
  torch.backends.cudnn.benchmark = True
  torch.manual_seed(spec["seed"])
  model = torch_reference.UNet(in_channels=spec["in_channels"], num_classes=1,
                               **_model_kwargs(spec)).to(device).train()
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = model.to(memory_format=memory_format)
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=1e-8)
  images, masks = _batch(spec)
  images = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
  images = images.contiguous(memory_format=memory_format)
  targets = torch.from_numpy(masks > 0).float()[:, None].to(device)
  forward = model
  if compile:  # spec["torch_compile_mode"] overrides, e.g. to fit a GPU session's budget.
    mode = spec.get("torch_compile_mode") or ("max-autotune" if cuda else "default")
    forward = torch.compile(model, mode=mode)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
      logits = forward(images / 127.5 - 1.0)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    optimizer.step()
    return loss

  def step(count: int):
    for _ in range(count):
      train_step()
    if cuda:
      torch.cuda.synchronize()

  def peak_memory_mib():
    if cuda:
      return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    return None

  info = {"device_name": torch.cuda.get_device_name() if cuda else "cpu",
          "torch_threads": torch.get_num_threads(),
          "torch_interop_threads": torch.get_num_interop_threads()}
  return step, peak_memory_mib, info


def matmul_peak_gflops(framework: str, size: int = 2048, repeats: int = 8,
                       inner: int = 1) -> dict:
  """Best-of-`repeats` square matmul throughput (GFLOP/s) in fp32 and bf16.

  Random operands (zeros or ones can run faster than real data); each timed block runs
  `inner` products back to back, so a GPU's launch and sync overhead is amortised. fp32 is
  each framework's default precision: TF32 for JAX on a GPU, true fp32 for torch's matmul.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  results = {}
  flops = 2 * size**3 * inner
  operand = np.random.default_rng(0).standard_normal((size, size), np.float32)
  for dtype_name in ("fp32", "bf16"):
    if framework == "jax":
      import jax  # pylint: disable=import-outside-toplevel
      import jax.numpy as jnp
      dtype = jnp.float32 if dtype_name == "fp32" else jnp.bfloat16
      a = jnp.asarray(operand, dtype)
      # A float32 accumulator: XLA:CPU's bf16 dot runs at its fast rate only when asked for
      # a float32 result (bf16 x bf16 -> bf16 runs at the fp32 rate or below).
      matmul = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
      products = lambda: [matmul(a) for _ in range(inner)]  # pylint: disable=cell-var-from-loop
      sync = lambda results: results[-1].block_until_ready()
    else:
      import torch  # pylint: disable=import-outside-toplevel
      dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
      device = "cuda" if torch.cuda.is_available() else "cpu"
      a = torch.from_numpy(operand).to(device=device, dtype=dtype)
      products = lambda: [torch.mm(a, a) for _ in range(inner)]  # pylint: disable=cell-var-from-loop
      sync = lambda _: torch.cuda.synchronize() if device == "cuda" else None  # pylint: disable=cell-var-from-loop
    sync(products())
    best = float("inf")
    for _ in range(repeats):
      start = time.perf_counter()
      sync(products())
      best = min(best, time.perf_counter() - start)
    results[dtype_name] = flops / best / 1e9
  return results


def _build(name: str, spec):
  framework, _, options = VARIANTS[name]
  options = {key: value for key, value in options.items() if key != "malloc"}
  if framework == "jax":
    return build_jax(spec, **options)
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(spec["threads"])
  return build_torch(spec, **options)


def _remove_inductor_cache():
  if "unet-jax-inductor-" in os.environ.get("TORCHINDUCTOR_CACHE_DIR", ""):
    shutil.rmtree(os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


def worker(conn, name: str, spec, build_lock=None) -> None:
  """Builds one variant, reports its first step, then answers ('run', n) / ('peak',) / ('stop',).

  With `build_lock` (a multiprocessing Lock), the imports run at once in every worker and
  only the builds and first steps take turns: on a GPU host that starts several variants
  together, no compile or autotuning run shares the device or the cores with another.
  """
  if VARIANTS[name][2].get("compile"):  # A cold compile: no inductor cache from earlier runs.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="unet-jax-inductor-")
  # Every variant process holds the one GPU at once: JAX must not take 75% of its memory
  # up front (its default), or the next process cannot start. Allocation then grows on
  # demand in the same BFC allocator; a variable set by the caller wins.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  # Before either framework starts its threads.
  host_memory.configure(VARIANTS[name][2].get("malloc", "system"))
  try:
    if VARIANTS[name][0] == "jax":
      import jax  # pylint: disable=import-outside-toplevel,unused-import
    else:
      from benchmarks import torch_reference  # pylint: disable=import-outside-toplevel,unused-import
    baseline = _rss_mib("VmRSS")
    with build_lock or contextlib.nullcontext():
      start = time.perf_counter()
      step, device_peak, info = _build(name, spec)
      step(1)
      info["first_step_s"] = time.perf_counter() - start
    info["baseline_rss_mib"] = baseline
    info["pid"] = os.getpid()
    conn.send(("ready", info))
  except Exception:  # pylint: disable=broad-except
    _remove_inductor_cache()
    conn.send(("error", traceback.format_exc(limit=8)))
    return
  while True:
    command, *args = conn.recv()
    try:
      if command == "run":
        start = time.perf_counter()
        step(args[0])
        conn.send(("ok", time.perf_counter() - start))
      elif command == "matmul_peak":
        conn.send(("ok", matmul_peak_gflops(VARIANTS[name][0], *args)))
      elif command == "memory":
        peak = device_peak()
        if peak is None:
          peak = (_rss_mib("VmHWM") - baseline, "process peak RSS minus RSS after imports")
        conn.send(("ok", peak))
      elif command == "stop":
        _remove_inductor_cache()
        conn.send(("ok", None))
        return
    except Exception:  # pylint: disable=broad-except
      conn.send(("error", traceback.format_exc(limit=8)))
