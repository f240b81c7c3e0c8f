"""TGS Salt: binary salt masks on 101x101 gray seismic images, padded (mirrored) to 128x128.

Prepare once (the Kaggle train.zip, or train/images + train/masks, and depths.csv):
  python -m unet_jax.data.prepare --dataset tgs --manual_dir ~/Downloads/tgs \\
      --data_dir ~/tensorflow_datasets
Train (a full Kaggle download; ~1000 images or fewer: configs/tgs.py:small), then score with
flip TTA (threshold and minimum area searched on validation):
  python -m unet_jax.main --config configs/tgs.py --workdir runs/tgs
  python -m unet_jax.main --config configs/tgs.py:small --workdir runs/tgs_small
  python -m unet_jax.evaluate --workdir runs/tgs --tta flip --threshold_search \\
      --threshold_metric tgs_map --min_areas 0,40,80
Validation is 20% of the ids (by SHA-1 of the id); predictions crop the centre 101x101 back and
empty masks under config.min_area = 80 px. Recipe: a 16->256-channel U-Net whose levels gate
their channels by squeeze-excitation; BCE + Dice, then the Lovasz hinge for the last third (the
Kaggle TGS habit); flips, zoom up to 1.1x, brightness; :small adds rotations up to 10 deg, zoom
1.2x and dropout 0.1 after every level; the checkpoint with the best validation TGS metric.
6500 steps, or what fits time_budget_minutes = 60 (fitted at the first steps). Results on the
1000-pair sample (800 train / 200 validation ids): this config, **0.756** with flip TTA (0.752
at the shipped 0.5 / 80 px; IoU 0.788, Dice 0.881; best checkpoint step 6000) in its 6500 steps
(34 min, bf16, 2-core AMX Xeon, 2026-12-07); 0.751 in 6107 fitted steps (50 min, same machine
kind, 2026-12-05, before SE ran on the native kernels); single runs before squeeze-excitation: 0.724
in 1922 fitted steps (47 min, float32, 2-core AVX2 EPYC, 2026-12-04), 0.740 in 2201 (61 min,
same machine kind, 2026-12-02), 0.711 in 6500 steps (19 min, bf16, AMX Xeon, 2026-12-01); :small
0.700 in 5009 fitted steps (51 min, bf16, Zen 5, 2026-12-03). Cross-validated on 3 folds of the
sample (paired TGS metric): squeeze-excitation +0.011 +- 0.004 at the shipped threshold 0.5 / 80
px, every fold (0.720 +- 0.021 against 0.709 +- 0.013 at 1000 steps, training 18.3-18.7 min a
fold against 19.3-19.5 on 2 AVX2 cores, float32); the regularisation of :small +0.019 +- 0.005
at 2000 steps (96 epochs of 667 images; 0.722 +- 0.017), but -0.009 +- 0.005 (every fold) at
1000 steps (48 epochs), the regime a full download's 3200 images get in an hour (20-65 epochs),
hence this default; float32 and bf16 train to the same quality (-0.001 +- 0.008). Every lever,
kept or not: benchmarks/quality/tgs_recipe.md. Kaggle's 0.85 needs the full download; on 800
training images the best is ~0.75.
"""

from configs import default


# The regularisation by the size of the training set: it pays when an hour's schedule gives
# the set 100+ epochs and costs when it gives ~50 (cross-validated at 96 and 48 epochs of 667
# images: tgs_recipe.md). `configs/tgs.py` is the Kaggle download (3200 training images: 20-65
# epochs in an hour on 2 CPU cores); `configs/tgs.py:small` a set of ~1000 images or fewer.
REGULARISATION = {
    "full": {"rotation_degrees": 0.0, "scale": 0.1, "brightness": 0.05, "dropout": 0.0},
    "small": {"rotation_degrees": 10.0, "scale": 0.2, "brightness": 0.1, "dropout": 0.1},
}


def get_config(data: str = "full"):
  if data not in REGULARISATION:
    raise ValueError(f"configs/tgs.py:{data}: unknown variant; use configs/tgs.py (a full Kaggle "
                     "download) or configs/tgs.py:small (~1000 images or fewer)")
  regularisation = REGULARISATION[data]
  config = default.get_config()
  config.dataset = "tgs"
  config.data_resolution = "native"  # 101x101, padded to image_size by mirroring.
  config.image_size = (128, 128)
  config.num_classes = 1
  config.loss = "bce_dice"
  # Then the Lovasz hinge for the last third (the Kaggle TGS habit; cross-validated: tgs_recipe.md).
  # A reference, so --config.num_train_steps=N moves the switch to 2N/3 with it.
  config.loss_stage2 = "lovasz_hinge"
  config.loss_stage2_step = config.get_ref("num_train_steps") * 2 // 3
  # Flips, zoom and brightness; :small adds rotations and dropout (REGULARISATION above).
  config.augment.hflip = True
  config.augment.rotation_degrees = regularisation["rotation_degrees"]
  config.augment.scale = regularisation["scale"]
  config.augment.brightness = regularisation["brightness"]
  config.augment.contrast = 0.1
  # 16 -> 256 channels: 0.45 s a step against 1.22 s at 32, and at equal training time it
  # scores higher on salt images (cross-validated: tgs_recipe.md).
  config.model.features = 16
  config.model.depth = 4
  config.model.dropout = regularisation["dropout"]  # After every level.
  # Each level's channels gated by their spatial means (Hu et al. 2018; the TGS solutions' SE
  # blocks): +0.011 +- 0.004 TGS, every fold, at equal steps (tgs_recipe.md). Its step cost:
  # none measurable in float32 on the AVX2 EPYC; in bf16 on the AMX Xeon +15% since its passes
  # run on the native kernels (295 against 257 ms a step, 300-step runs, 2026-12-07; +52% as
  # XLA ops, which widen and narrow bf16 in every pass: 392 ms).
  config.model.squeeze_excitation = True
  config.learning_rate = 1e-3
  config.schedule = "warmup_cosine"
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_train_steps = 6500  # All of it in 34 min on 2 AMX Xeon cores (2026-12-07).
  # Or fewer where they would not fit an hour: the run times its first steps and fits the
  # schedule (and the Lovasz switch) to the steps that do (unet_jax/budget.py; 0 = off).
  config.time_budget_minutes = 60.0
  config.eval_every_steps = 500
  config.best_metric = "tgs_map"  # The competition metric picks the checkpoint predict uses.
  config.min_area = 80  # predict empties masks under 80 px (cross-validated: tgs_recipe.md).
  # One never-trimmed malloc arena (unet_jax/host_memory.py): this step's buffers otherwise
  # page-fault every step. 300 steps + 1 eval, quiet 2-core Xeon: 260 -> 195 ms a step, 88 -> 64 s
  # of wall time (kernel time 42 -> 2 s), peak RSS 1.2 -> 2.3 GB.
  config.host_malloc = "reuse"
  return config
