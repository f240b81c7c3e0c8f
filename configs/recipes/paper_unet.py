"""The 2015 U-Net paper (Ronneberger et al.): unpadded (VALID) convs, cropped skips, 2-class
softmax cross-entropy, optional boundary weight map, SGD with momentum 0.99.

The paper reports ISBI-2012 EM segmentation (warping error 0.000353) and ISBI cell tracking
IoU 0.92 (PhC-U373) / 0.78 (DIC-HeLa); those data are not among the three datasets served
here, so this recipe trains the paper's network on TGS Salt (gray images, like EM).
Prepare (TGS, native 101x101):
  python -m unet_jax.data.prepare --dataset tgs --manual_dir ~/Downloads/tgs \\
      --data_dir ~/tensorflow_datasets
Train:
  python -m unet_jax.main --config configs/recipes/paper_unet.py --workdir runs/paper_unet
As in the paper: 64 -> 1024 channels, no normalisation (convs with bias), 2x2 up-convs, VALID
convs with centre-cropped skips, and the overlap-tile strategy (the 101x101 tile is mirrored
out to the 285+ pixels a depth-4 VALID U-Net needs so the output covers it). The paper
trains one 572x572 tile per step; batch 32 of 101x101 holds about as many pixels (326k).
The paper gives no learning rate; 0.01 is our choice. 20 epochs of the 3200 train ids
(Kaggle's 4000, 20% held out) = epochs_to_steps(20, 3200, 32) = 2000 steps.
Boundary weight map (eq. 2, w0 = 10, sigma = 5): --config.weight_map=True (computed per
augmented training mask in the input pipeline).
Our result, a timing run only: 6 of the 2000 steps on the 1000-image TGS sample (800 train,
200 val; --config.num_train_steps=6 --config.eval_every_steps=6): val Dice 0.000 (all
background; pixel accuracy 0.776), 13.9 min wall and 16 GiB peak RSS on a 2-core AMD EPYC
CPU, about 100 s per step: the full schedule is a GPU job.
"""

from configs import default
from configs.recipes import epochs_to_steps, steps_per_epoch

TRAIN_IMAGES = 3200  # TGS: 80% of the 4000 Kaggle train ids.
EPOCHS = 20


def get_config():
  config = default.get_config()
  config.dataset = "tgs"
  config.data_resolution = "native"  # 101x101, fed as is; the model mirrors the border.
  config.image_size = (101, 101)
  config.num_classes = 2  # Background / salt, softmax (the paper's 2-channel output).
  config.loss = "softmax_ce"
  config.weight_map = False  # True: the paper's boundary weight map on the loss.
  config.weight_map_w0 = 10.0
  config.weight_map_sigma = 5.0
  config.augment.hflip = True
  config.augment.rotation_degrees = 10.0  # Paper: shifts, rotations, elastic deformations.
  config.augment.scale = 0.1
  config.model.features = 64
  config.model.depth = 4
  config.model.norm = "none"  # The paper predates BatchNorm: convs with bias + ReLU.
  config.model.upsample = "transpose"  # 2x2 up-convolution.
  config.model.padding = "VALID"
  config.model.valid_output = "overlap_tile"
  config.optimizer = "sgd"
  config.momentum = 0.99
  config.learning_rate = 1e-2
  config.schedule = "constant"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = epochs_to_steps(EPOCHS, TRAIN_IMAGES, config.batch_size)
  config.eval_every_steps = 5 * steps_per_epoch(TRAIN_IMAGES, config.batch_size)
  config.best_metric = "dice"
  # host_malloc='reuse' made its CPU step 1.43x faster at batch 4, but at batch 32 its heap
  # outgrew 24 GiB by step 3, where glibc's default held ~10 GiB: keep the default.
  return config
