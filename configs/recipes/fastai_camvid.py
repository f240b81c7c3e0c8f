"""fastai's CamVid U-Net recipe: one-cycle AdamW, 12 epochs, pixel accuracy without void.

Tutorial (fastai CamVid, `unet_learner` + `fit_one_cycle`): reported pixel accuracy 0.87.
Variants (the part after ':' in --config):
  fastai_camvid.py           5-level U-Net (64 -> 1024), conv + BN + ReLU with bias-free convs,
                             2x2 transposed-conv up-sampling.
  fastai_camvid.py:resnet34  ResNet-34 encoder + U-Net decoder (fastai's own default); set
                             --config.model.pretrained=~/resnet34.pth to start the encoder
                             from a torchvision ResNet-34 state_dict you have ('' = random).
Prepare (CamVid, SegNet layout, stored resized to 256x384):
  python -m unet_jax.data.prepare --dataset camvid --manual_dir ~/Downloads/camvid \\
      --data_dir ~/tensorflow_datasets --resolution 256x384
Train:
  python -m unet_jax.main --config configs/recipes/fastai_camvid.py --workdir runs/fastai_camvid
  python -m unet_jax.main --config configs/recipes/fastai_camvid.py:resnet34 \\
      --workdir runs/fastai_camvid_r34 --config.model.pretrained=~/resnet34.pth
Differences: images are resized to 256x384 when prepared (fastai random-crops); the SegNet
11-class CamVid (367 train images) replaces fastai's 32-class one; batch 8 is our choice.
12 epochs = epochs_to_steps(12, 367, 8) = 551 steps; validation once per epoch (46 steps).
Our result, on the 80-image CamVid sample (60 train, 20 val) prepared at 256x384, where an
epoch is 8 steps (--config.num_train_steps=23 --config.eval_every_steps=8 for 3 epochs), on a
2-core AMD EPYC CPU: U-Net, 3 epochs: pixel accuracy 0.448 (mIoU 0.082), 16.5 min; ResNet-34
from random weights (no torchvision file here), 3 epochs: 0.549 (mIoU 0.156), 3.3 min, and
the full 12 epochs (--config.num_train_steps=90): 0.615 at the end, 0.631 at best (epoch 7),
mIoU 0.201, 16.2 min. fastai's 0.87 comes from 367 images
and an ImageNet-pretrained encoder: not comparable.
"""

from configs import default
from configs.recipes import epochs_to_steps, steps_per_epoch

TRAIN_IMAGES = 367  # CamVid (SegNet) train split.
EPOCHS = 12


def get_config(variant: str = "unet"):
  config = default.get_config()
  config.dataset = "camvid"
  config.data_resolution = ""  # Prepared at image_size (256x384).
  config.image_size = (256, 384)
  config.num_classes = 11
  config.ignore_index = 11  # Void: out of loss and accuracy (fastai's acc_camvid).
  config.loss = "softmax_ce"
  config.augment.hflip = True
  config.augment.rotation_degrees = 10.0  # fastai's default aug_transforms max_rotate.
  config.augment.scale = 0.1  # fastai's default max_zoom 1.1.
  config.augment.brightness = 0.2  # fastai's default max_lighting 0.2.
  config.augment.contrast = 0.2
  if variant == "resnet34":
    config.model.arch = "resnet34_unet"
    config.model.pretrained = ""  # Path of a torchvision resnet34 .pth you have; '' = random.
  elif variant != "unet":
    raise ValueError(f"fastai_camvid variant {variant!r}: choose unet or resnet34")
  config.model.features = 64
  config.model.depth = 4  # 5 levels: 64, 128, 256, 512 and the 1024 bottleneck.
  config.model.norm = "batch"  # Bias-free convs + BatchNorm + ReLU.
  config.model.upsample = "transpose"
  config.optimizer = "adamw"
  config.learning_rate = 3e-3  # fit_one_cycle max lr.
  config.weight_decay = 1e-2
  config.schedule = "one_cycle"
  config.one_cycle_pct_start = 0.25  # fastai's fit_one_cycle default.
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = epochs_to_steps(EPOCHS, TRAIN_IMAGES, config.batch_size)
  config.eval_every_steps = steps_per_epoch(TRAIN_IMAGES, config.batch_size)
  config.log_every_steps = 10
  config.best_metric = "pixel_accuracy"
  return config
