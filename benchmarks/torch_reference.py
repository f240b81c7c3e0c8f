"""A PyTorch U-Net that mirrors `unet_jax.models.UNet` (NCHW), and weight porting both ways.

Module names follow the Flax parameter tree (encoder_{k}.ConvBNReLU_0.Conv_0, ...), so a
torch state_dict key is the Flax path joined by dots with the leaf renamed:

  Flax (params / batch_stats)                 torch
  Conv kernel (kh, kw, in, out)  HWIO     ->  weight (out, in, kh, kw)  OIHW
  Dense kernel (in, out)                  ->  Linear weight (out, in)
  ConvTranspose kernel (kh, kw, in, out)  ->  weight (in, out, kh, kw), spatially flipped
  BatchNorm scale / bias                  ->  weight / bias
  batch_stats mean / var                  ->  running_mean / running_var

The flip: flax's ConvTranspose (transpose_kernel=False) is a correlation over the
stride-dilated input, so output pixel (2i + a) sees kernel tap (1 - a); torch's
conv_transpose2d gives it tap a.

BatchNorm: flax momentum 0.9 == torch momentum 0.1, eps 1e-5 on both. torch updates
running_var with the unbiased batch variance, flax with the biased one, so running variances
drift apart by a factor n / (n - 1) of each update (n = pixels per channel in the batch).
"""

import functools

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from unet_jax.models.unet import _levels, input_padding


class ConvBNReLU(nn.Module):
  """3x3 conv -> optional BatchNorm -> ReLU; bias only when norm='none'."""

  def __init__(self, in_channels: int, features: int, padding: str, norm: str):
    super().__init__()
    use_bn = norm == "batch"
    self.Conv_0 = nn.Conv2d(in_channels, features, 3, padding=1 if padding == "SAME" else 0,
                            bias=not use_bn)
    self.BatchNorm_0 = nn.BatchNorm2d(features, eps=1e-5, momentum=0.1) if use_bn else None
    nn.init.kaiming_normal_(self.Conv_0.weight, nonlinearity="relu")

  def forward(self, x):
    x = self.Conv_0(x)
    if self.BatchNorm_0 is not None:
      x = self.BatchNorm_0(x)
    return F.relu(x)


class SqueezeExcitation(nn.Module):
  """Channels gated by sigmoid(expand(relu(reduce(spatial mean)))), in float32 as the Flax
  block (autocast off)."""

  def __init__(self, channels: int, reduction: int = 8):
    super().__init__()
    self.reduce = nn.Linear(channels, max(1, channels // reduction))
    self.expand = nn.Linear(max(1, channels // reduction), channels)

  def forward(self, x):
    with torch.autocast(x.device.type, enabled=False):
      squeezed = x.float().mean(dim=(2, 3))
      gate = torch.sigmoid(self.expand(F.relu(self.reduce(squeezed))))
    return x * gate[:, :, None, None].to(x.dtype)


class DoubleConv(nn.Module):
  """Two ConvBNReLU layers, then optionally squeeze-excitation."""

  def __init__(self, in_channels: int, features: int, padding: str, norm: str,
               squeeze_excitation: bool = False):
    super().__init__()
    self.ConvBNReLU_0 = ConvBNReLU(in_channels, features, padding, norm)
    self.ConvBNReLU_1 = ConvBNReLU(features, features, padding, norm)
    self.se = SqueezeExcitation(features) if squeeze_excitation else None

  def forward(self, x):
    x = self.ConvBNReLU_1(self.ConvBNReLU_0(x))
    return x if self.se is None else self.se(x)


class UpSample(nn.Module):
  """2x2 stride-2 transposed conv, or bilinear (align_corners=False) + 1x1 conv."""

  def __init__(self, in_channels: int, features: int, mode: str):
    super().__init__()
    self.mode = mode
    if mode == "transpose":
      self.ConvTranspose_0 = nn.ConvTranspose2d(in_channels, features, 2, stride=2)
    elif mode == "bilinear":
      self.Conv_0 = nn.Conv2d(in_channels, features, 1)
    else:
      raise ValueError(f"upsample must be 'transpose' or 'bilinear', got {mode!r}")

  def forward(self, x):
    if self.mode == "transpose":
      return self.ConvTranspose_0(x)
    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return self.Conv_0(x)


def center_crop(x, height: int, width: int):
  """Crops the spatial centre of an NCHW tensor (same offsets as the Flax model)."""
  top = (x.shape[2] - height) // 2
  left = (x.shape[3] - width) // 2
  return x[:, :, top:top + height, left:left + width]


def reflect_pad(x, top: int, bottom: int, left: int, right: int):
  """numpy-style 'reflect' padding of NCHW, also for pads larger than the image."""
  if max(top, bottom) < x.shape[2] and max(left, right) < x.shape[3]:
    return F.pad(x, (left, right, top, bottom), mode="reflect")
  for dim, before, after in ((2, top, bottom), (3, left, right)):
    index = np.pad(np.arange(x.shape[dim]), (before, after), mode="reflect")
    x = x.index_select(dim, torch.as_tensor(index, device=x.device))
  return x


class UNet(nn.Module):
  """The torch twin of `unet_jax.models.UNet` (same options, NCHW in, NCHW logits out)."""

  def __init__(self, in_channels: int = 3, num_classes: int = 1, features: int = 64,
               depth: int = 4, dropout=0.0, norm: str = "batch", upsample: str = "transpose",
               padding: str = "SAME", overlap_tile: bool = True,
               squeeze_excitation: bool = False):
    super().__init__()
    if padding not in ("SAME", "VALID"):
      raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
    self.depth, self.padding, self.overlap_tile = depth, padding, overlap_tile
    self.dropout = _levels(dropout, depth)
    channels = in_channels
    double_conv = functools.partial(DoubleConv, padding=padding, norm=norm,
                                    squeeze_excitation=squeeze_excitation)
    for level in range(depth):
      self.add_module(f"encoder_{level}", double_conv(channels, features * 2**level))
      channels = features * 2**level
    self.bottleneck = double_conv(channels, features * 2**depth)
    channels = features * 2**depth
    for level in reversed(range(depth)):
      level_features = features * 2**level
      self.add_module(f"up_{level}", UpSample(channels, level_features, upsample))
      self.add_module(f"decoder_{level}", double_conv(2 * level_features, level_features))
      channels = level_features
    self.head = nn.Conv2d(channels, num_classes, 1)

  def forward(self, images):
    height, width = images.shape[2:]
    x, crop = self._pad_input(images)
    x = self._unet(x)
    if crop is not None:
      top, left = crop
      x = x[:, :, top:top + height, left:left + width]
    return x

  def _pad_input(self, x):
    """Mirror of UNet._pad_input (the same input_padding): reflect padding and its crop."""
    pads, crop = input_padding(x.shape[2], x.shape[3], self.depth, self.padding,
                               self.overlap_tile)
    if pads is not None:
      x = reflect_pad(x, *pads[0], *pads[1])
    return x, crop

  def _unet(self, x):
    skips = []
    for level in range(self.depth):
      x = getattr(self, f"encoder_{level}")(x)
      x = F.dropout(x, self.dropout[level], self.training)
      skips.append(x)
      x = F.max_pool2d(x, 2, 2)
    x = F.dropout(self.bottleneck(x), self.dropout[self.depth], self.training)
    for level in reversed(range(self.depth)):
      x = getattr(self, f"up_{level}")(x)
      skip = center_crop(skips[level], x.shape[2], x.shape[3])
      x = getattr(self, f"decoder_{level}")(torch.cat([skip, x], dim=1))
    return self.head(x.to(self.head.weight.dtype))  # fp32 under autocast, as the Flax head.


def from_flax_module(module, in_channels: int) -> UNet:
  """The torch twin of a Flax `UNet` module (dtype settings are not mirrored); ValueError for
  the options it does not mirror."""
  unmirrored = {name: getattr(module, name) for name, default in UNMIRRORED.items()
                if getattr(module, name, default) != default}
  if unmirrored:
    raise ValueError(f"the torch twin does not mirror {unmirrored}; use the defaults "
                     f"{ {name: UNMIRRORED[name] for name in unmirrored} }")
  return UNet(in_channels=in_channels, num_classes=module.num_classes, features=module.features,
              depth=module.depth, dropout=module.dropout, norm=module.norm,
              upsample=module.upsample, padding=module.padding,
              overlap_tile=module.overlap_tile, squeeze_excitation=module.squeeze_excitation)


# Flax UNet options the twin leaves out, and the value it has without them.
UNMIRRORED = {"block": "double_conv", "empty_head": False, "deep_supervision": False,
              "hypercolumn": False, "resize_output": ""}


_PARAM_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_STAT_LEAVES = {"mean": "running_mean", "var": "running_var"}


def _kernel_to_torch(path, kernel):
  if kernel.ndim == 2:  # Dense.
    return kernel.T
  if path[-2].startswith("ConvTranspose"):
    return kernel[::-1, ::-1].transpose(2, 3, 0, 1)
  return kernel.transpose(3, 2, 0, 1)


def _kernel_to_flax(key, weight):
  if ".ConvTranspose_" in key:
    return weight.transpose(2, 3, 0, 1)[::-1, ::-1]
  return weight.transpose(2, 3, 1, 0)


def flax_to_state_dict(variables) -> dict[str, torch.Tensor]:
  """Flax {'params', 'batch_stats'} -> a torch state_dict (float32 tensors)."""
  state = {}
  for collection, leaves in (("params", _PARAM_LEAVES), ("batch_stats", _STAT_LEAVES)):
    for path, value in traverse_util.flatten_dict(dict(variables.get(collection, {}))).items():
      value = np.asarray(value, np.float32)
      if path[-1] == "kernel":
        value = _kernel_to_torch(path, value)
      key = ".".join(path[:-1] + (leaves[path[-1]],))
      state[key] = torch.from_numpy(np.array(value, np.float32))
  return state


def state_dict_to_flax(state_dict, dtype=np.float32) -> dict:
  """A torch state_dict -> Flax {'params', 'batch_stats'} (numpy leaves of `dtype`)."""
  params, stats = {}, {}
  for key, tensor in state_dict.items():
    *path, leaf = key.split(".")
    if leaf == "num_batches_tracked":
      continue
    value = tensor.detach().double().cpu().numpy().astype(dtype)
    if leaf in ("running_mean", "running_var"):
      stats[tuple(path) + ({"running_mean": "mean", "running_var": "var"}[leaf],)] = value
    elif leaf == "weight" and value.ndim == 4:
      params[tuple(path) + ("kernel",)] = np.ascontiguousarray(_kernel_to_flax(key, value))
    elif leaf == "weight" and value.ndim == 2:  # Linear.
      params[tuple(path) + ("kernel",)] = np.ascontiguousarray(value.T)
    elif leaf == "weight":
      params[tuple(path) + ("scale",)] = value
    else:
      params[tuple(path) + ("bias",)] = value
  variables = {"params": traverse_util.unflatten_dict(params)}
  if stats:
    variables["batch_stats"] = traverse_util.unflatten_dict(stats)
  return variables


def load_flax(model: UNet, variables) -> UNet:
  """Copies Flax variables into `model` in place; every parameter must be covered."""
  missing, unexpected = model.load_state_dict(flax_to_state_dict(variables), strict=False)
  missing = [key for key in missing if not key.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"weight port mismatch: missing {missing}, unexpected {unexpected}")
  return model
