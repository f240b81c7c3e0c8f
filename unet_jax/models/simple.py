"""The "simple" encoder-decoder of the Keras Carvana recipe: strided convs down, transposed
convs up, no skip connections (the baseline its U-Net is compared with), NHWC."""

import flax.linen as nn
import jax.numpy as jnp

from unet_jax.models.blocks import Dtype, he_normal
from unet_jax.ops import layers


class SimpleEncoderDecoder(nn.Module):
  """depth x (3x3 stride-2 conv + ReLU) down, depth x (3x3 stride-2 transposed conv + ReLU)
  up, then a 1x1 head; returns float32 logits (N, H, W, num_classes).

  Stage k has features * 2**k channels. Inputs not divisible by 2**depth are reflect-padded
  and the logits cropped back, as in UNet.
  """

  num_classes: int = 1
  features: int = 32
  depth: int = 3
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # auto | xla | onednn: see UNet (transposed convs stay on XLA).

  @nn.compact
  def __call__(self, images, train: bool = False):
    del train  # No BatchNorm or dropout.
    height, width = images.shape[1:3]
    multiple = 2**self.depth
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    x = jnp.pad(images.astype(self.dtype),
                ((0, 0), (top, pad_h - top), (left, pad_w - left), (0, 0)), mode="reflect")
    conv = dict(kernel_init=he_normal, dtype=self.dtype, param_dtype=self.param_dtype)
    impl = layers.resolve(self.conv_impl, self.dtype)
    for level in range(self.depth):
      x = nn.relu(layers.conv(impl, self.features * 2**level, (3, 3), strides=(2, 2),
                              padding="SAME", name=f"down_{level}", **conv)(x))
    for level in reversed(range(self.depth)):
      x = nn.relu(nn.ConvTranspose(self.features * 2**level, (3, 3), (2, 2), padding="SAME",
                                   name=f"up_{level}", **conv)(x))
    logits = layers.conv(impl, self.num_classes, (1, 1), kernel_init=he_normal,
                         dtype=jnp.float32, param_dtype=self.param_dtype, name="head")(
                             x.astype(jnp.float32))
    return logits[:, top:top + height, left:left + width]
