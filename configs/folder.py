"""Your own images: a folder of images and masks (binary by default), any sizes.

Prepare once from DIR/images/* and DIR/masks/* (same file names; see unet_jax/data/folder.py
for other layouts, --classes for multi-class masks, --resolution HxW to resize):
  python -m unet_jax.data.prepare --dataset folder --manual_dir DIR \\
      --data_dir ~/tensorflow_datasets
It prints the training command, with the image_size (and num_classes, loss) that fit, e.g.:
  python -m unet_jax.main --config configs/folder.py --workdir runs/folder \\
      --config.data_dir=~/tensorflow_datasets --config.image_size='(256, 256)'
Predict (masks come back at each image's own size):
  python -m unet_jax.predict --workdir runs/folder --input NEW_IMAGES --output runs/folder/masks
Smaller images are padded to image_size (mirrored; their masks with the ignored label 255), so
only each image's own pixels count in loss and metrics.
Result (depends on your data): the Carvana sample as shipped (48 pairs, 3 cars) prepared with
  --image_glob 'train/*.jpg' --mask_glob 'train_masks/*.gif' --mask_name '{stem}_mask.gif'
  --group_regex '^(.+)_\\d\\d$' --resolution 128x192
(32 train / 16 val, whole cars held out), then the printed command with
--config.num_train_steps=200 --config.eval_every_steps=100: validation Dice 0.960 (IoU 0.923),
188 s on a 2-core Intel Xeon with AMX (bf16 by model.dtype=auto), 2026-12-01.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "folder"
  config.data_resolution = "native"  # As stored by prepare: native, or the --resolution HxW.
  config.image_size = (256, 256)  # >= every stored image, divisible by 2**model.depth.
  config.num_classes = 1  # 1 = binary (sigmoid); prepare prints K for --classes masks.
  config.ignore_index = 255  # Void pixels and padding (unet_jax.data.folder.VOID).
  config.loss = "bce_dice"  # Binary; softmax_ce for num_classes > 1.
  config.augment.hflip = True  # Random left-right flips.
  config.augment.rotation_degrees = 5.0  # Small random rotations.
  config.augment.scale = 0.1  # Random zoom-in up to 10%.
  config.augment.brightness = 0.05  # Random brightness shift, fraction of 0..255.
  config.augment.contrast = 0.1  # Random contrast change.
  config.model.features = 32  # First-level channels (doubling per level): half the classic 64.
  config.model.depth = 4  # Poolings: image_size must divide by 16.
  config.learning_rate = 1e-3  # Peak learning rate (Adam).
  config.schedule = "warmup_cosine"  # Linear warm-up, then cosine decay to 0.
  config.warmup_steps = 100  # Warm-up steps.
  config.batch_size = 16  # Images per step.
  config.eval_batch_size = 16  # Images per validation batch.
  config.num_train_steps = 2000  # Optimisation steps.
  config.eval_every_steps = 250  # Validation, checkpoints and plots.
  config.best_metric = "dice"  # Binary Dice; miou for multi-class.
  return config
