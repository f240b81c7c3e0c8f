"""TGS Salt: binary salt masks on 101x101 gray seismic images, padded (mirrored) to 128x128.

Prepare once (the Kaggle train.zip, or train/images + train/masks, and depths.csv):
  python -m unet_jax.data.prepare --dataset tgs --manual_dir ~/Downloads/tgs \\
      --data_dir ~/tensorflow_datasets
Train:
  python -m unet_jax.main --config configs/tgs.py --workdir runs/tgs
Validation is 20% of the ids (by SHA-1 of the id); predictions crop the centre 101x101 back and
empty masks under config.min_area = 80 px (`predict --min_area` overrides).
Result on the 1000-pair sample (800 train / 200 validation ids), this config as shipped, on a
2-core Intel Xeon (AMX, bf16 by default): 3000 steps in 61 min (1.0-1.3 s a step); best
checkpoint (step 2500, by IoU) scored by `python -m unet_jax.evaluate --tta flip
--threshold_search --threshold_metric tgs_map --min_areas 0,40,80`: TGS metric 0.685 plain,
0.708 with flip TTA (IoU 0.783, Dice 0.878), 0.713 with TTA and the 80 px minimum area at
threshold 0.5 (predict's), 0.723 at threshold 0.55. Far from Kaggle's 0.85: 800 training images.
The validation curve (TGS): 0.33, 0.61, 0.63, 0.67, 0.68, 0.67 at steps 500..3000.
Levers cross-validated on 3 folds of the sample (240 steps each, flip TTA; paired gain in the
TGS metric over this config's 0.647 +- 0.009; benchmarks/results/cpu-intel-xeon-2c/tgs_cv.md):
residual blocks -0.038 +- 0.011, a Lovasz-hinge second stage +0.001 +- 0.011, the empty-mask
head +0.001 +- 0.019, squeeze-excitation -0.010 +- 0.023 and stronger augmentation (rotation 10
deg, scale 0.2, brightness 0.1) -0.041 +- 0.040 were not kept, nor was checkpoint averaging
(`--checkpoint average:3`, steps 180-240: +0.004 +- 0.009 over the same runs' last checkpoint,
tgs_cv_checkpoint_averaging.md); float32 instead of bfloat16 -0.007 +- 0.011 at 2.7x the step
time (so bf16 stays); the 80 px minimum area was kept (+0.010 +- 0.008 per fold). Held-out
images without salt already score 0.92, those with salt 0.47: what is left is mask quality on
salt, not specks on empty images. At 600 steps (same folds, tgs_cv_600.md): 0.653 +- 0.021
(salt 0.53, empty 0.84: more specks, so post-processing pays more, +0.035 +- 0.016 at threshold
0.65 / 160 px, 0.688), and stronger augmentation still does not pay (-0.032 +- 0.032).
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
  config.num_train_steps = 3000  # 61 min on 2 Xeon cores (bf16); about an hour.
  config.eval_every_steps = 500
  config.best_metric = "iou"
  config.min_area = 80  # predict empties masks under 80 px (cross-validated: see docstring).
  return config
