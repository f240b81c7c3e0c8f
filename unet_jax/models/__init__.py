"""Model definitions and their construction from a config."""

from unet_jax import precision
from unet_jax.errors import ConfigError
from unet_jax.models.resnet_unet import ResNetUNet
from unet_jax.models.simple import SimpleEncoderDecoder
from unet_jax.models.unet import UNet, tiny_unet
from unet_jax.ops import library, winograd

__all__ = ["UNet", "ResNetUNet", "SimpleEncoderDecoder", "tiny_unet", "from_config"]

_CHOICES = {
    "norm": ("batch", "none"),
    "upsample": ("transpose", "bilinear"),
    "padding": ("SAME", "VALID"),
    "upsample_impl": ("auto", "matmul", "adjoint_conv", "conv_transpose"),
    "valid_output": ("overlap_tile", "resize_nearest", "resize_bilinear"),
    "conv_impl": library.IMPLS,
    "excitation": ("channel", "concurrent"),
    "block": ("double_conv", "residual"),
    "conv_algo": winograd.ALGOS,
}


def check_conv_impl(model_config) -> str:
  """config.model.conv_impl, checked: 'onednn' where the kernels cannot load is a ConfigError."""
  impl = model_config.get("conv_impl", "auto")
  if impl not in library.IMPLS:
    raise ConfigError(f"model.conv_impl={impl!r} is not one of {library.IMPLS}; "
                      "set --config.model.conv_impl to one of them")
  if impl == "onednn" and (reason := library.unavailable_reason()):
    raise ConfigError(f"model.conv_impl=onednn but {reason}; or set "
                      "--config.model.conv_impl=auto (XLA where oneDNN is missing)")
  return impl


def from_config(config):
  """The model described by `config.model` with `config.num_classes` outputs."""
  model_config = config.model
  arch = model_config.get("arch", "unet")
  conv_impl = check_conv_impl(model_config)
  if model_config.dtype not in precision.DTYPES:
    raise ConfigError(f"model.dtype={model_config.dtype!r} is not one of {precision.DTYPES}; "
                      "set --config.model.dtype to one of them")
  dtype = precision.compute_dtype(model_config.dtype, conv_impl)
  if arch in ("resnet18_unet", "resnet34_unet"):
    return ResNetUNet(num_classes=config.num_classes, arch=arch.removesuffix("_unet"),
                      dtype=dtype, conv_impl=conv_impl)
  if arch == "simple_encoder_decoder":
    return SimpleEncoderDecoder(num_classes=config.num_classes, features=model_config.features,
                                depth=model_config.depth, dtype=dtype,
                                conv_impl=conv_impl)
  if arch != "unet":
    raise ConfigError(f"model.arch={arch!r} is not one of unet, resnet18_unet, resnet34_unet, "
                      "simple_encoder_decoder; set --config.model.arch to one of them")
  for field, choices in _CHOICES.items():
    if model_config.get(field, choices[0]) not in choices:
      raise ConfigError(f"model.{field}={model_config[field]!r} is not one of {choices}; "
                        f"set --config.model.{field} to one of them")
  block = model_config.get("block", "double_conv")
  if block == "residual" and (model_config.padding, model_config.norm) != ("SAME", "batch"):
    raise ConfigError("model.block=residual needs model.padding=SAME and model.norm=batch; "
                      "set them, or use --config.model.block=double_conv")
  empty_head = model_config.get("empty_head", False)
  if empty_head and config.num_classes != 1:
    raise ConfigError(f"model.empty_head needs a binary task (num_classes=1), this config has "
                      f"{config.num_classes} classes; set --config.model.empty_head=False")
  deep_supervision = model_config.get("deep_supervision", False)
  if deep_supervision and model_config.padding != "SAME":
    raise ConfigError("model.deep_supervision needs model.padding=SAME; set it, or "
                      "--config.model.deep_supervision=False")
  hypercolumn = model_config.get("hypercolumn", False)
  if hypercolumn and model_config.padding != "SAME":
    raise ConfigError("model.hypercolumn needs model.padding=SAME; set it, or "
                      "--config.model.hypercolumn=False")
  dropout = model_config.dropout
  if not isinstance(dropout, (int, float)) and len(dropout) != model_config.depth + 1:
    raise ConfigError(f"model.dropout has {len(dropout)} rates but depth {model_config.depth} "
                      f"needs {model_config.depth + 1} (one per level, bottleneck last)")
  return UNet(num_classes=config.num_classes, features=model_config.features,
              depth=model_config.depth, dropout=dropout if isinstance(dropout, (int, float))
              else tuple(dropout), norm=model_config.norm, upsample=model_config.upsample,
              padding=model_config.padding, dtype=dtype,
              upsample_impl=model_config.get("upsample_impl", "auto"),
              remat=model_config.get("remat", False), conv_impl=conv_impl, block=block,
              conv_algo=model_config.get("conv_algo", "direct"),
              zero_init_residual=model_config.get("zero_init_residual", False),
              squeeze_excitation=model_config.get("squeeze_excitation", False),
              excitation=model_config.get("excitation", "channel"),
              empty_head=empty_head, deep_supervision=deep_supervision, hypercolumn=hypercolumn,
              resize_to=_resize_to(model_config),
              **_valid_output(model_config.get("valid_output", "overlap_tile")))


def _resize_to(model_config) -> tuple[int, ...]:
  """config.model.resize_to, checked: () or (height, width) with SAME padding."""
  size = tuple(model_config.get("resize_to", ()) or ())
  if size and (len(size) != 2 or min(size) < 1 or model_config.padding != "SAME"):
    raise ConfigError(f"model.resize_to={size!r} needs two positive sizes (height, width) and "
                      "model.padding=SAME; e.g. --config.model.resize_to='(128, 128)', or ()")
  if size and model_config.get("deep_supervision", False):
    raise ConfigError("model.resize_to and model.deep_supervision do not combine (the deep "
                      "heads' logits stay at the resized size); set one of them off")
  return tuple(int(s) for s in size)


def _valid_output(choice: str) -> dict:
  """UNet's VALID-output attributes for model.valid_output."""
  if choice == "overlap_tile":
    return {}
  return {"overlap_tile": False, "resize_output": choice.removeprefix("resize_")}
