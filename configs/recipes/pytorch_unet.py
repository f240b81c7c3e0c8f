"""The classic PyTorch U-Net (64 -> 1024 channels, 3x3 convs with padding 1, BatchNorm,
2x2 transposed-conv up-sampling) on generated shapes: no download needed.

Tutorial: the common PyTorch U-Net implementation (e.g. milesial/Pytorch-UNet, `UNet(n_channels,
n_classes, bilinear=False)`), trained here on our synthetic shapes; there is no published
number on these images to compare with.
Train:
  python -m unet_jax.main --config configs/recipes/pytorch_unet.py --workdir runs/pytorch_unet
Adam 1e-4 and BCE + Dice are our choices (milesial trains with RMSprop). 2000 generated
images, batch 16, 10 epochs = epochs_to_steps(10, 2000, 16) = 1250 steps.
Our result, 1 of the 10 epochs (--config.num_train_steps=125): val Dice 0.944, IoU 0.893,
pixel accuracy 0.987, in 5 min wall on a 2-core AMD EPYC CPU; the full schedule wants a GPU.
"""

from configs import default
from configs.recipes import epochs_to_steps, steps_per_epoch

EPOCHS = 10


def get_config():
  config = default.get_config()
  config.dataset = "synthetic"
  config.synthetic.num_train = 2000
  config.synthetic.num_val = 256
  config.image_size = (64, 64)
  config.num_classes = 1
  config.loss = "bce_dice"
  config.model.features = 64
  config.model.depth = 4
  config.model.norm = "batch"
  config.model.upsample = "transpose"
  config.model.padding = "SAME"  # padding=1 on every 3x3 conv.
  config.optimizer = "adam"
  config.learning_rate = 1e-4
  config.schedule = "constant"
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_train_steps = epochs_to_steps(EPOCHS, config.synthetic.num_train, config.batch_size)
  config.eval_every_steps = 2 * steps_per_epoch(config.synthetic.num_train, config.batch_size)
  config.best_metric = "dice"
  return config
