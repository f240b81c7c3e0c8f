"""CamVid (SegNet): 11 classes on 480x360 street scenes; void (11) is ignored.

Images are padded from 360x480 to 368x480 (divisible by 16 for a depth-4 U-Net); the padded
rows are labelled void, so they count in neither loss nor metrics.
Prepare once (SegNet layout: train/, trainannot/, val/, valannot/[, test/, testannot/]):
  python -m unet_jax.data.prepare --dataset camvid --manual_dir ~/Downloads/camvid \\
      --data_dir ~/tensorflow_datasets
Train:
  python -m unet_jax.main --config configs/camvid.py --workdir runs/camvid
Result: not run yet on the full download (its schedule wants a GPU).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "camvid"
  config.data_resolution = "native"  # 360x480, padded to image_size with void labels.
  config.image_size = (368, 480)
  config.num_classes = 11
  config.ignore_index = 11
  config.loss = "softmax_ce"
  config.augment.hflip = True
  config.augment.rotation_degrees = 5.0
  config.augment.scale = 0.2
  config.augment.brightness = 0.1
  config.augment.contrast = 0.1
  config.model.features = 32
  config.model.depth = 4
  config.learning_rate = 1e-3
  config.schedule = "warmup_cosine"
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_train_steps = 6000
  config.eval_every_steps = 500
  config.best_metric = "miou"
  return config
