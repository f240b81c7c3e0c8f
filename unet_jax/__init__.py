"""unet_jax: performance-first JAX/Flax U-Nets for image segmentation."""

from unet_jax.models import ResNetUNet, UNet, tiny_unet

__all__ = ["UNet", "ResNetUNet", "tiny_unet"]
