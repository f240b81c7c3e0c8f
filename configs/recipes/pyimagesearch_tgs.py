"""pyimagesearch's PyTorch U-Net on TGS Salt: a small VALID U-Net without BatchNorm.

Tutorial ("U-Net: Training Image Segmentation Models in PyTorch"): encoder channels
(16, 32, 64), two unpadded 3x3 conv + ReLU per block, 2x2 max pool, 2x2 transposed convs,
cropped skips, the 88x88 output resized back to 128x128 (F.interpolate, nearest), BCE with
logits, Adam 1e-3, 40 epochs, batch 64, 15% test split, threshold 0.5. The tutorial shows
train/test BCE curves and predicted masks; no reported score is recorded here to compare.
Prepare (TGS, stored resized to 128x128 as the tutorial's cv2.resize does):
  python -m unet_jax.data.prepare --dataset tgs --manual_dir ~/Downloads/tgs \\
      --data_dir ~/tensorflow_datasets --resolution 128x128
Train:
  python -m unet_jax.main --config configs/recipes/pyimagesearch_tgs.py \\
      --workdir runs/pyimagesearch_tgs
Differences: the held-out split is our TGS builder's fixed 20% (by SHA-1 of the id), not a
random 15%; the resize is jax.image.resize 'nearest' (half-pixel centres), not torch's
index rule. 40 epochs of 3200 train ids = epochs_to_steps(40, 3200, 64) = 2000 steps.
Our result, the full 40 epochs on the 1000-image TGS sample prepared at 128x128 (800 train,
200 val; --config.num_train_steps=500 --config.eval_every_steps=130, i.e. 40 epochs of 800):
val pixel accuracy 0.898, Dice 0.738, IoU 0.585, BCE 0.275, TGS mAP 0.493 (128x128 resized
masks), 14 min wall on a 2-core AMD EPYC CPU (host_malloc=reuse).
"""

from configs import default
from configs.recipes import epochs_to_steps, steps_per_epoch

TRAIN_IMAGES = 3200  # TGS: 80% of the 4000 Kaggle train ids.
EPOCHS = 40


def get_config():
  config = default.get_config()
  config.dataset = "tgs"
  config.data_resolution = ""  # Prepared at image_size (128x128, resized).
  config.image_size = (128, 128)
  config.num_classes = 1
  config.loss = "bce"
  config.augment.hflip = False  # The tutorial trains without augmentation.
  config.model.features = 16  # 16, 32 and the 64-channel last block.
  config.model.depth = 2
  config.model.norm = "none"  # Conv + ReLU, convs with bias.
  config.model.upsample = "transpose"
  config.model.padding = "VALID"
  config.model.valid_output = "resize_nearest"  # 88x88 -> 128x128, F.interpolate's default.
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.schedule = "constant"
  config.batch_size = 64
  config.eval_batch_size = 64
  config.num_train_steps = epochs_to_steps(EPOCHS, TRAIN_IMAGES, config.batch_size)
  config.eval_every_steps = 10 * steps_per_epoch(TRAIN_IMAGES, config.batch_size)
  config.best_metric = "loss"  # The tutorial keeps the last model; the loss is what it tracks.
  # Its 63 MiB VALID activations page-fault on every CPU step with glibc's malloc: reuse makes
  # the CPU step 2.2x faster (unet_jax/host_memory.py).
  config.host_malloc = "reuse"
  config.best_mode = "min"
  return config
