"""Model FLOPs of a U-Net train step from one analytic formula, used for both frameworks.

A convolution producing an (H, W, C_out) map from C_in channels with a k x k kernel costs
2 * H * W * k * k * C_in * C_out FLOPs forward (one multiply-add = 2 FLOPs); a 2x2 stride-2
transposed conv costs 2 * H_in * W_in * 4 * C_in * C_out. A training step costs the forward
plus the input gradient and the weight gradient of every conv, each as large as its forward,
except the first conv whose input needs no gradient:

  train = 3 * forward - first_conv_forward.

BatchNorm, ReLU, pooling, resizing, the loss and the optimizer (all O(pixels * channels)) are
left out, as is usual for MFU.
"""

from unet_jax.models.unet import smallest_valid_input


def _padded_size(size: int, depth: int, padding: str) -> int:
  """Spatial size the network actually runs at (after UNet._pad_input)."""
  if padding == "SAME":
    return size + (-size % 2**depth)
  return smallest_valid_input(size, depth)


def _conv(height, width, kernel, c_in, c_out):
  return 2 * height * width * kernel * kernel * c_in * c_out


def forward_flops(height: int, width: int, in_channels: int, features: int, depth: int,
                  padding: str = "SAME", upsample: str = "transpose",
                  num_classes: int = 1) -> tuple[int, int]:
  """Forward conv FLOPs for one image, and those of its first conv."""
  shrink = 0 if padding == "SAME" else 2  # Pixels a 3x3 conv loses per side pair.
  h, w = _padded_size(height, depth, padding), _padded_size(width, depth, padding)
  total, first, channels, sizes = 0, None, in_channels, []

  def double_conv(h, w, c_in, c_out):
    nonlocal first
    h1, w1 = h - shrink, w - shrink
    one = _conv(h1, w1, 3, c_in, c_out)
    first = one if first is None else first
    h2, w2 = h1 - shrink, w1 - shrink
    return one + _conv(h2, w2, 3, c_out, c_out), h2, w2

  for level in range(depth):
    flops, h, w = double_conv(h, w, channels, features * 2**level)
    total, channels = total + flops, features * 2**level
    sizes.append((h, w))
    h, w = h // 2, w // 2
  flops, h, w = double_conv(h, w, channels, features * 2**depth)
  total, channels = total + flops, features * 2**depth
  for level in reversed(range(depth)):
    level_features = features * 2**level
    if upsample == "transpose":
      total += 2 * h * w * 4 * channels * level_features
    else:
      total += _conv(2 * h, 2 * w, 1, channels, level_features)
    h, w = 2 * h, 2 * w  # The skip is cropped to this size.
    flops, h, w = double_conv(h, w, 2 * level_features, level_features)
    total, channels = total + flops, level_features
  total += _conv(h, w, 1, channels, num_classes)
  return total, first


def train_flops(height: int, width: int, in_channels: int, features: int, depth: int,
                padding: str = "SAME", upsample: str = "transpose", num_classes: int = 1) -> int:
  """Train-step FLOPs for one image: 3 * forward - first conv forward."""
  forward, first = forward_flops(height, width, in_channels, features, depth, padding,
                                 upsample, num_classes)
  return 3 * forward - first

