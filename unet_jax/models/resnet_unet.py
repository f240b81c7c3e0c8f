"""U-Net with a ResNet-18/34 encoder (the fastai CamVid recipe's variant), NHWC.

The encoder mirrors torchvision's ResNet layer for layer, so an ImageNet state_dict the user
already has can be imported (models/torchvision_import.py); nothing is downloaded.
"""

from typing import Literal

import flax.linen as nn
import jax.numpy as jnp

from unet_jax.models.blocks import BasicBlock, DoubleConv, Dtype, UpSample, he_normal
from unet_jax.ops import layers

STAGE_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STAGE_FEATURES = (64, 128, 256, 512)


class ResNetEncoder(nn.Module):
  """Returns the feature maps at strides 2, 4, 8, 16 and 32."""

  arch: Literal["resnet18", "resnet34"] = "resnet34"
  dtype: Dtype = jnp.float32
  conv_impl: str = "xla"  # Resolved: xla | onednn.

  @nn.compact
  def __call__(self, x, train: bool):
    x = layers.conv(self.conv_impl, 64, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                    use_bias=False, kernel_init=he_normal, dtype=self.dtype, name="conv1")(x)
    stem = layers.batch_norm_relu(self.conv_impl, x, train, dtype=self.dtype, name="bn1")
    x = nn.max_pool(stem, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = [stem]
    for stage, (blocks, width) in enumerate(zip(STAGE_BLOCKS[self.arch], STAGE_FEATURES)):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, self.dtype, self.conv_impl,
                       name=f"layer{stage + 1}_{block}")(x, train)
      features.append(x)
    return features


class ResNetUNet(nn.Module):
  """ResNet encoder + U-Net decoder (transposed-conv up, concatenated skips, double convs).

  Input sizes not divisible by 32 are reflect-padded and the logits cropped back; logits
  are float32 (N, H, W, num_classes).
  """

  num_classes: int = 1
  arch: Literal["resnet18", "resnet34"] = "resnet34"
  decoder_features: tuple[int, ...] = (256, 128, 64, 64, 32)
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # auto | xla | onednn: see UNet.

  @nn.compact
  def __call__(self, images, train: bool = False):
    height, width = images.shape[1:3]
    pad_h, pad_w = -height % 32, -width % 32
    top, left = pad_h // 2, pad_w // 2
    x = jnp.pad(images.astype(self.dtype),
                ((0, 0), (top, pad_h - top), (left, pad_w - left), (0, 0)), mode="reflect")
    impl = layers.resolve(self.conv_impl, self.dtype)
    skips = ResNetEncoder(self.arch, self.dtype, impl, name="encoder")(x, train)
    x = skips.pop()
    skips.reverse()  # Strides 16, 8, 4, 2.
    for level, features in enumerate(self.decoder_features):
      x = UpSample(features, "transpose", self.dtype, conv_impl=impl, name=f"up_{level}")(x)
      if level < len(skips):
        x = jnp.concatenate([skips[level], x], axis=-1)
      x = DoubleConv(features, dtype=self.dtype, conv_impl=impl, name=f"decoder_{level}")(
          x, train)
    logits = layers.conv(impl, self.num_classes, (1, 1), dtype=jnp.float32, name="head")(
        x.astype(jnp.float32))
    return logits[:, top:top + height, left:left + width]
