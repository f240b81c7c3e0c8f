"""The Keras Carvana recipe: 96x128 images, Dice loss, Adam 1e-4, early stopping, keep best.

Tutorial reports validation Dice 0.8788 for its "simple" encoder-decoder (no skips) and
0.9416 for its U-Net (64 filters, dropout 0.3 in the two deepest levels).
Variants (the part after ':' in --config):
  keras_carvana.py         the U-Net: 64 -> 1024 filters, dropout 0.3 at level 4 and the
                           bottleneck (Keras Dropout after those blocks).
  keras_carvana.py:simple  strided-conv encoder-decoder without skip connections
                           (models/simple.py: 3 x stride-2 conv down, 3 x transposed up).
Prepare (Keras used the first 1000 images of the sorted train folder, split 80/20; to match,
prepare from a folder holding only those and their masks):
  mkdir -p ~/Downloads/carvana1000/train ~/Downloads/carvana1000/train_masks
  for f in $(ls ~/Downloads/carvana/train | sort | head -1000); do
    cp ~/Downloads/carvana/train/$f ~/Downloads/carvana1000/train/
    cp ~/Downloads/carvana/train_masks/${f%.jpg}_mask.gif ~/Downloads/carvana1000/train_masks/
  done
  python -m unet_jax.data.prepare --dataset carvana --manual_dir ~/Downloads/carvana1000 \\
      --data_dir ~/tensorflow_datasets/carvana1000 --resolution 96x128
Train:
  python -m unet_jax.main --config configs/recipes/keras_carvana.py --workdir runs/keras_unet \\
      --config.data_dir=~/tensorflow_datasets/carvana1000
  python -m unet_jax.main --config configs/recipes/keras_carvana.py:simple \\
      --workdir runs/keras_simple --config.data_dir=~/tensorflow_datasets/carvana1000
Differences: our 20% validation holds whole cars (Keras split images, so near-duplicate
angles of one car sat on both sides, which flatters its Dice); augmentation is a horizontal
flip, rotation 0.01 turn (3.6 deg) and contrast 0.2; batch 32 and the 50-epoch cap
(early stopping ends the run first) are our choices. One epoch = steps_per_epoch(800, 32)
= 25 steps: validation, early-stopping check and best-checkpoint pick after every epoch.
Our result, on the 48-image Carvana sample (3 cars; train 2 cars = 32 images, val 1 car = 16)
prepared at 96x128, where one epoch is one step of batch 32 (--config.num_train_steps=50
--config.eval_every_steps=1): simple, 50 epochs (early stopping did not fire): val Dice 0.334,
pixel accuracy 0.223 (it still marks nearly everything car: 50 Adam 1e-4 steps are too few),
4 min wall on a 2-core AMD EPYC CPU. U-Net: early stopping ended it at epoch 8; the kept
(lowest val loss) epoch 6 has val Dice 0.489, 3.4 min wall. Neither is comparable with the
tutorial's 800 images x 25 steps per epoch.
"""

from configs import default
from configs.recipes import epochs_to_steps, steps_per_epoch

TRAIN_IMAGES = 800  # 80% of the first 1000 images.
MAX_EPOCHS = 50


def get_config(variant: str = "unet"):
  config = default.get_config()
  config.dataset = "carvana"
  config.data_dir = "~/tensorflow_datasets/carvana1000"  # Prepared from the first 1000 images.
  config.data_resolution = ""  # Prepared at image_size.
  config.image_size = (96, 128)
  config.num_classes = 1
  config.loss = "dice"
  config.augment.hflip = True
  config.augment.rotation_degrees = 3.6  # Keras RandomRotation(0.01): 0.01 of a full turn.
  config.augment.contrast = 0.2  # Keras RandomContrast(0.2).
  if variant == "unet":
    config.model.arch = "unet"
    config.model.features = 64
    config.model.depth = 4
    del config.model["dropout"]  # The default is one float; this is a per-level tuple.
    config.model.dropout = (0.0, 0.0, 0.0, 0.3, 0.3)  # The two deepest levels.
    config.model.norm = "none"  # Keras Conv2D + ReLU, with bias, no BatchNorm.
  elif variant == "simple":
    config.model.arch = "simple_encoder_decoder"
    config.model.features = 32  # 32, 64, 128 channels down, 128, 64, 32 up.
    config.model.depth = 3
  else:
    raise ValueError(f"keras_carvana variant {variant!r}: choose unet or simple")
  config.optimizer = "adam"
  config.learning_rate = 1e-4
  config.adam_eps = 1e-6
  config.schedule = "constant"
  config.batch_size = 32
  config.eval_batch_size = 32
  config.num_train_steps = epochs_to_steps(MAX_EPOCHS, TRAIN_IMAGES, config.batch_size)
  config.eval_every_steps = steps_per_epoch(TRAIN_IMAGES, config.batch_size)
  config.log_every_steps = 5
  config.early_stopping_patience = 2
  config.early_stopping_metric = "loss"  # Keras EarlyStopping(monitor='val_loss').
  config.early_stopping_mode = "min"
  config.best_metric = "loss"  # restore_best_weights: the lowest validation loss.
  config.best_mode = "min"
  return config
