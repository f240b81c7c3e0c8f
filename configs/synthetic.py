"""The embedded demo: binary segmentation of generated shapes, no download.

Command:
  python -m unet_jax.main --config configs/synthetic.py --workdir runs/demo
Result: validation Dice 0.977 (IoU 0.956) after 200 steps; 73 s on a 2-core AMD EPYC with AVX2
only (float32: model.dtype='auto' finds no native bf16), jax 0.10.2, 2026-12-02, from a fresh
clone with no compilation cache, install excluded. The previous 300 steps at lr 3e-3: Dice 0.980,
103 s on the same VM kind; 43 s in bfloat16 on a 2-core Intel Xeon with AMX.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = "synthetic"
  config.image_size = (64, 64)
  config.num_classes = 1
  config.loss = "bce_dice"
  config.model.features = 16
  config.model.depth = 3
  # 200 steps at 6e-3 reach what 300 at 3e-3 did (Dice 0.977 / 0.983 for seeds 0 / 2 against
  # 0.980), a third sooner: the README's first command, and the suite's longest test.
  config.learning_rate = 6e-3
  config.schedule = "warmup_cosine"
  config.warmup_steps = 35
  config.batch_size = 16
  config.num_train_steps = 200
  config.log_every_steps = 50
  config.eval_every_steps = 100
  return config
