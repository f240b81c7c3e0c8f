"""Carvana: binary car masks, trained at 256x384 (the 1918x1280 photos resized at prepare time).

Prepare once (the Kaggle train.zip or train_hq.zip, and train_masks.zip, or their folders):
  python -m unet_jax.data.prepare --dataset carvana --manual_dir ~/Downloads/carvana \\
      --data_dir ~/tensorflow_datasets --resolution 256x384
Train:
  python -m unet_jax.main --config configs/carvana.py --workdir runs/carvana
Other resolutions: prepare with e.g. --resolution 640x960, then train with
  --config.image_size='(640, 960)' (data_resolution '' reads the prepared size = image_size).
Augmentation follows the Keras Carvana recipe: flips, rotation 0.01 turn (3.6 deg), contrast 0.2.
Result: the full 3000 steps not run yet (~2.7 h on 2 cores). On ../shared/data/carvana_40cars
(32 cars train, 8 held out by car, prepared at 256x384), 600 steps
(--config.num_train_steps=600 --config.eval_every_steps=200), bf16 by model.dtype=auto:
validation Dice 0.9813 (step 200), 0.9870 (400), 0.9887 (600); predicted at 1918x1280 against
the original GIFs 0.9888 (benchmarks/quality/carvana_fullres.py, report in
benchmarks/results/cpu-intel-xeon-2c/). 43 min 51 s on a 2-core Intel Xeon with AMX (3.2 s a
step when quiet; the first ~20 min shared with other jobs), 2026-12-01.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "carvana"
  config.data_resolution = ""  # The prepared HxW that equals image_size.
  config.image_size = (256, 384)
  config.num_classes = 1
  config.loss = "bce_dice"
  config.augment.hflip = True
  config.augment.rotation_degrees = 3.6
  config.augment.contrast = 0.2
  config.model.features = 32
  config.model.depth = 4
  config.learning_rate = 1e-3
  config.schedule = "warmup_cosine"
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 3000
  config.eval_every_steps = 500
  config.best_metric = "dice"
  return config
