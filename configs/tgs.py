"""TGS Salt: binary salt masks on 101x101 gray seismic images, padded (mirrored) to 128x128.

Prepare once (the Kaggle train.zip, or train/images + train/masks, and depths.csv):
  python -m unet_jax.data.prepare --dataset tgs --manual_dir ~/Downloads/tgs \\
      --data_dir ~/tensorflow_datasets
Train:
  python -m unet_jax.main --config configs/tgs.py --workdir runs/tgs
Validation is 20% of the ids (by SHA-1 of the id); predictions crop the centre 101x101 back.
Result: not yet run at this full schedule. On the 1000-image sample, 300 steps with
--config.model.features=8 --config.model.depth=3 reached a TGS score of 0.531 on the 200
validation ids (evaluate, 101x101 pixels; 0.549 with flip TTA), on a 2-core CPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "tgs"
  config.data_resolution = "native"  # 101x101, padded to image_size by mirroring.
  config.image_size = (128, 128)
  config.num_classes = 1
  config.loss = "bce_dice"
  config.augment.hflip = True
  config.augment.scale = 0.1
  config.augment.brightness = 0.05
  config.augment.contrast = 0.1
  config.model.features = 32
  config.model.depth = 4
  config.learning_rate = 1e-3
  config.schedule = "warmup_cosine"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 2400  # ~55 min of steps on 2 CPU cores (1.37 s each, bf16).
  config.eval_every_steps = 400
  config.best_metric = "iou"
  config.min_area = 80  # predict empties masks under 80 px (cross-validated: see docstring).
  return config
