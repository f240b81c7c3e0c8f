"""unet_jax: performance-first JAX/Flax U-Nets for image segmentation."""

from unet_jax.models import UNet, tiny_unet

__all__ = ["UNet", "tiny_unet"]
