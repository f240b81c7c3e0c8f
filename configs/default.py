"""Defaults every task config starts from; each field says what it does.

Not meant to be trained directly: use configs/synthetic.py (the demo), tgs.py, carvana.py or
camvid.py, which override what their task needs.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = "synthetic"  # synthetic | tgs | carvana | camvid | folder (your own).
  config.data_dir = "~/tensorflow_datasets"  # Where `python -m unet_jax.data.prepare` wrote data.
  config.data_resolution = "native"  # Prepared size: native | HxW | "" = image_size.
  config.image_size = (64, 64)  # (height, width) the model sees.
  config.num_classes = 1  # Output channels: 1 = binary with sigmoid, >1 = softmax classes.
  config.ignore_index = -1  # Label value left out of loss and metrics (CamVid void = 11); -1 none.
  # grain worker processes decoding/augmenting: -1 = one per core on a GPU/TPU host, threads
  # only (0) on a CPU, whose cores run the step; or a count.
  config.num_workers = -1
  config.prefetch = 4  # Host batches read ahead of the step (at least one per reading thread).
  # Batches put on the device(s) ahead of the step by background threads (grain's thread
  # prefetch), so reading and copying overlap the step's dispatch: -1 = 2 beside a GPU/TPU,
  # 0 (inline) on a CPU, where the threads cost the demo 9-11% a step; or a count.
  config.device_prefetch = -1
  # Cross-validation: 0 = the prepared train/val split; K >= 2 pools train + val and holds out
  # fold `fold` (TGS stratified by salt coverage, Carvana by car, CamVid by sequence).
  config.num_folds = 0
  config.fold = 0  # The held-out fold, 0..num_folds-1 (python -m unet_jax.cross_validate runs all).
  # True: deal the folds from the prepared train split only and keep its val split out of every
  # fold, as a test set (split 'holdout') on which cross_validate scores each fold and their
  # ensemble: what averaging the folds gains on images none of them saw.
  config.fold_holdout = False
  config.cache_decoded_mb = 2048  # Decode a prepared split into RAM once if it fits (0 = never).

  # Synthetic shapes (dataset = 'synthetic').
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_train = 2000  # Generated training images.
  config.synthetic.num_val = 256  # Generated validation images (a different seed).
  config.synthetic.multiclass = False  # True: 5 classes (background + 4 shape kinds).

  # Augmentation, applied identically to image and mask.
  config.augment = ml_collections.ConfigDict()
  config.augment.hflip = True  # Random left-right flips.
  config.augment.rotation_degrees = 0.0  # Max rotation in +-degrees (Keras' 0.01 = 3.6).
  config.augment.scale = 0.0  # Max random zoom-in (random crop + resize): zoom in [1, 1 + scale].
  config.augment.brightness = 0.0  # Max random brightness shift, as a fraction of 0..255.
  config.augment.contrast = 0.0  # Max random contrast change around the channel mean (Keras 0.2).

  # Model: unet_jax.models.UNet.
  config.model = ml_collections.ConfigDict()
  # unet | resnet18_unet | resnet34_unet (ResNet encoder) | simple_encoder_decoder (no skips).
  config.model.arch = "unet"
  config.model.pretrained = ""  # resnet*_unet: a torchvision ResNet state_dict file you have.
  config.model.features = 64  # Channels of the first level (doubles per level).
  config.model.depth = 4  # Poolings; 4 gives the classic 64 -> 1024 U-Net.
  # One rate, or depth + 1 per-level rates (bottleneck last), e.g.
  # --config.model.dropout='(0,0,0.1,0.1,0.1)': typed `object` so that either parses.
  config.model.dropout = config_dict.FieldReference(0.0, field_type=object)
  config.model.norm = "batch"  # batch | none.
  config.model.upsample = "transpose"  # transpose (2x2 up-conv) | bilinear (+ 1x1 conv).
  # How transpose is computed, same math: auto (matmul on a CPU, adjoint_conv: three
  # convolution kernels, on GPUs/TPUs) | matmul | adjoint_conv | conv_transpose.
  config.model.upsample_impl = "auto"
  # Level unit: double_conv (the paper's) | residual (ResNet BasicBlock, 1x1 projection
  # shortcut; SAME + batch norm only), as the Kaggle TGS Res-U-Nets.
  config.model.block = "double_conv"
  # residual: True starts each block's last BatchNorm scale at 0 (the block starts as its 1x1
  # shortcut), False at 1: +0.045 +- 0.016 TGS for False, every fold (3-fold CV, tgs_recipe.md).
  config.model.zero_init_residual = False
  config.model.squeeze_excitation = False  # Gate each level's channels (squeeze-excitation).
  # With squeeze_excitation: 'channel' (SE) or 'concurrent' (scSE: plus a per-pixel gate;
  # -0.007 +- 0.004 TGS in 3-fold CV on the sample, benchmarks/quality/tgs_recipe.md).
  config.model.excitation = "channel"
  # Binary: an image-level "any foreground" logit from the pooled bottleneck gates every pixel
  # (p = sigmoid(pixel) * sigmoid(image)), trained also by its own BCE (empty_head_loss_weight):
  # the TGS solutions' empty-mask classifier, for data with many empty masks (TGS: 39%).
  config.model.empty_head = False
  # A 1x1 head on each decoder level but the last, trained by the first-stage loss against the
  # full-size mask (its logits resized), weighted by deep_supervision_weight, halved per level.
  config.model.deep_supervision = False
  # The head reads every decoder level (coarser ones resized to full size and concatenated),
  # not only the last: the TGS winners' hypercolumns. SAME only. No gain in a 3-fold TGS CV
  # at 2000 steps (-0.000 +- 0.004), costs no step time since 2026-12-03.
  config.model.hypercolumn = False
  # (height, width) the U-Net sees: inputs resized to it (bilinear), logits back to the input's
  # size; () = the input's own size. SAME only. TGS with image_size (101, 101) and resize_to
  # (128, 128) (the images stretched to 128x128, not mirrored into it): -0.011 +- 0.004, every
  # fold (3-fold CV, 1000 steps: benchmarks/quality/tgs_recipe.md).
  config.model.resize_to = ()
  config.model.remat = False  # Recompute activations per level in backward (saves memory).
  config.model.padding = "SAME"  # SAME | VALID (the paper's unpadded convs, cropped skips).
  # VALID only: overlap_tile (mirror-pad the input so the output covers it) | resize_nearest |
  # resize_bilinear (the raw, smaller output resized to the input, as pyimagesearch does).
  config.model.valid_output = "overlap_tile"
  # Compute dtype (params stay float32): auto | float32 | bfloat16. auto = bfloat16 where the
  # hardware computes it natively (TPU; NVIDIA compute capability >= 8.0; the native CPU kernels
  # on a CPU with AVX512-BF16 or AMX), float32 elsewhere; the log says which and why
  # (unet_jax/precision.py). On the 2-core Zen 5 the tgs preset's step: 48.9 img/s fp32,
  # 79.1 bf16 (benchmarks/results/cpu-amd-epyc-2c/tgs.md). Same quality: on 3 TGS folds fp32
  # scored -0.007 +- 0.011 against bf16 at 2.7x the step time (AMX Xeon; tgs_cv.md there), and
  # configs/tgs.py's recipe at 2000 steps -0.001 +- 0.008 (float32 with Winograd on the AVX2
  # EPYC against bf16 on the Zen 5: cpu-amd-epyc-avx2-2c/tgs_cv_float32.md).
  config.model.dtype = "auto"
  # Kernels for convolutions, BatchNorm + ReLU and max-pools: auto (oneDNN on the CPU when the
  # native kernels were built, XLA on GPU/TPU) | xla | onednn. Same parameters either way.
  # bfloat16 on a CPU without AVX-512: auto takes XLA's (oneDNN has no bf16 convolutions there).
  config.model.conv_impl = "auto"
  # oneDNN: how 3x3 stride-1 convolutions run: direct (oneDNN's kernel) | winograd
  # (F(2x2,3x3): 2.25x fewer multiplications) | auto (per layer and pass, whichever is faster
  # on this CPU, timed once at the first step and cached: unet_jax/ops/winograd.py) |
  # auto_float32 (auto under float32 compute, direct under bf16). auto_float32 by default: in
  # float32 Winograd's error is float32 rounding, as direct's, and on the 2-core AVX2 EPYC
  # (float32 by dtype=auto) auto ran the classic step 1.93x faster than direct, 1.78x the best
  # PyTorch, and the tgs step 1.40x, 1.33x the best PyTorch
  # (benchmarks/results/cpu-amd-epyc-avx2-2c/{classic,tgs}.md; 6-30 s of timing at the first
  # run, then cached). In bf16 its error is ~2x direct's and training quality at full schedules is
  # not yet shown, so bf16 stays direct (auto there: classic 1.08-1.14x on the AVX512-BF16 Zen 5;
  # on the AMX Xeon Winograd wins only at the deepest levels).
  config.model.conv_algo = "auto_float32"

  # Loss and optimisation.
  # losses.LOSSES: bce softmax_ce dice bce_dice focal lovasz_hinge lovasz_hinge_symmetric
  # lovasz_hinge_elu bce_lovasz_elu lovasz_softmax.
  config.loss = "bce"
  # A second stage in the same run (the Kaggle TGS habit: BCE + Dice, then Lovasz hinge):
  # from step loss_stage2_step on, train with loss_stage2 ('' = one stage). Validation loss
  # stays `loss`, so its curve is comparable across the switch.
  config.loss_stage2 = ""
  config.loss_stage2_step = 0
  config.empty_head_loss_weight = 0.5  # model.empty_head: weight of its image-level BCE.
  config.deep_supervision_weight = 0.4  # model.deep_supervision: weight of the finest head.
  config.weight_map = False  # Weight pixels by the 2015 paper's boundary map (BoundaryWeights).
  config.weight_map_w0 = 10.0  # Boundary map: peak extra weight between two objects (paper: 10).
  config.weight_map_sigma = 5.0  # Boundary map: decay in pixels of the border term (paper: 5).
  config.optimizer = "adam"  # adam | adamw | sgd | rmsprop (torch.optim.RMSprop's update).
  config.learning_rate = 1e-3  # Peak learning rate.
  config.schedule = "constant"  # constant | warmup_cosine | warmup_cosine_restart | one_cycle.
  config.warmup_steps = 100  # warmup_cosine(_restart): linear warm-up steps.
  # warmup_cosine_restart: the second cosine (from loss_stage2_step) starts at this x the peak.
  # configs/tgs.py with it: -0.010 +- 0.007 TGS in 3-fold CV, every fold (tgs_recipe.md).
  config.restart_peak = 0.5
  config.one_cycle_pct_start = 0.25  # one_cycle: fraction of steps spent rising.
  # adamw: decoupled decay; rmsprop: L2 added to the gradient, as PyTorch (milesial: 1e-8).
  config.weight_decay = 1e-4
  config.momentum = 0.9  # sgd only (0 = plain SGD).
  config.nesterov = False  # sgd only.
  config.adam_eps = 1e-8  # adam/adamw epsilon.
  config.rmsprop_momentum = 0.9  # rmsprop only (0 = none; milesial/Pytorch-UNet: 0.9, later 0.999).
  config.rmsprop_decay = 0.99  # rmsprop only: square-average decay (PyTorch's alpha).
  config.rmsprop_eps = 1e-8  # rmsprop only: added to the root of the square average.
  config.grad_clip_value = 0.0  # Clip each gradient entry to +-this (clip_grad_value_; 0 = off).
  config.grad_clip_norm = 0.0  # Clip gradients to this global norm (0 = off).
  # Reduce-on-plateau: the learning rate (schedule x scale) is multiplied by lr_plateau_factor
  # after lr_plateau_patience evaluations without improvement of a validation metric (PyTorch's
  # ReduceLROnPlateau with patience p drops after p + 1). Saved in checkpoints.
  config.lr_plateau_patience = 0  # Evaluations without improvement before a drop (0 = off).
  config.lr_plateau_metric = "dice"  # Validation metric watched (any key of a val record).
  config.lr_plateau_mode = "max"  # max | min for lr_plateau_metric.
  config.lr_plateau_factor = 0.1  # Multiplier applied at each drop, in (0, 1).
  config.lr_plateau_threshold = 1e-4  # An improvement must beat the best by more than this.
  config.lr_plateau_cooldown = 0  # Evaluations after a drop during which none is counted.
  config.lr_plateau_min_scale = 0.0  # The scale never drops below this.

  # Schedule of the run.
  config.batch_size = 16  # Global batch (all devices, all hosts); must divide by device count.
  config.eval_batch_size = 32  # Global eval batch; must divide by device count.
  config.num_train_steps = 1000  # Optimisation steps.
  # Wall-time budget of a run in minutes (0 = none): after timing its first steps the run
  # trains num_train_steps or the steps that fit, whichever are fewer, the schedule fitted to
  # them (unet_jax/budget.py; kept in workdir/time_budget.json so a resume trains the same).
  config.time_budget_minutes = 0.0
  config.log_every_steps = 50  # Train-metric lines in the log and metrics.jsonl.
  config.eval_every_steps = 250  # Validation, checkpoints and plots.
  config.max_checkpoints = 2  # Latest checkpoints kept (the best one is kept separately).
  config.best_metric = "dice"  # Validation metric that picks the best checkpoint.
  config.best_mode = "max"  # max | min for best_metric.
  # Binary tasks: `predict` empties a mask with fewer foreground pixels than this (default of
  # its --min_area; choose it with cross_validate --threshold_search --min_areas). 0 = off.
  config.min_area = 0
  config.seed = 0  # Parameter init, dropout and data order.
  config.tensorboard = True  # Also write TensorBoard event files to workdir/tensorboard/.
  config.early_stopping_patience = 0  # Stop after this many evals without improvement (0 = off).
  config.early_stopping_metric = "loss"  # Validation metric watched by early stopping.
  config.early_stopping_mode = "min"  # min | max for early_stopping_metric.
  config.nan_policy = "skip"  # Non-finite loss/gradient: skip (the update) | stop (the run).
  config.restart = False  # True: wipe this workdir's run and start fresh instead of resuming.
  # Host malloc: system (glibc defaults) | reuse (one never-trimmed arena: XLA:CPU steps with
  # buffers over 32 MiB stop page-faulting). Real runs, quiet 2-core Xeon, 2026-12-01:
  # configs/carvana.py (40 steps + 1 eval) 1.69 -> 1.62 s a step for a peak RSS of 3.4 -> 9.5 GB,
  # so system here; configs/tgs.py (300 steps + 1 eval) 260 -> 195 ms for 1.2 -> 2.3 GB, so
  # tgs.py sets reuse. See unet_jax/host_memory.py.
  config.host_malloc = "system"
  # False: XLA:CPU runs each step on the calling thread. With the native kernels on 2 cores,
  # 20 queued (asynchronous) tgs steps took 455-710 ms each, inline 453-479; see
  # runtime.configure_cpu_dispatch.
  config.cpu_async_dispatch = False
  # Persistent XLA compilation cache shared by runs ('' = off): a rerun skips compilation.
  # It keeps compiles over 0.5 s, or over $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS if set.
  config.compilation_cache_dir = "~/.cache/unet_jax/xla"

  return config
