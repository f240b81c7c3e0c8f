"""configs/recipes: each tutorial preset loads as documented and trains end to end (2 steps,
tiny images) on the matching real sample prepared into a tmp dir, or on synthetic shapes."""

import importlib
import json
import math

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np
import pytest

from configs.recipes import epochs_to_steps, steps_per_epoch
from tests import _data_samples
from tests.conftest import REPO, shared_data_dir
from unet_jax import data, models, optim, steps, train
from unet_jax.data import augment, pipeline, prepare
from unet_jax.models import SimpleEncoderDecoder, UNet

# Init draws from an 'rbg' key: XLA:CPU compiles threefry init in ~20 s, rbg in ~3 s.
INIT_KEY = jax.random.key(1, impl="rbg")

# (config file, variant after ':' or None, dataset).
RECIPES = [
    ("fastai_camvid", None, "camvid"),
    ("fastai_camvid", "resnet34", "camvid"),
    ("keras_carvana", None, "carvana"),
    ("keras_carvana", "simple", "carvana"),
    ("paper_unet", None, "tgs"),
    ("pyimagesearch_tgs", None, "tgs"),
    ("pytorch_unet", None, "synthetic"),
]
IDS = [name if variant is None else f"{name}:{variant}" for name, variant, _ in RECIPES]


def _load(name, variant):
  """The config exactly as `--config configs/recipes/<name>.py[:variant]` loads it."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  path = REPO / "configs" / "recipes" / f"{name}.py"
  flag_values(["test", f"--config={path}" + (f":{variant}" if variant else "")])
  return flag_values.config


@pytest.mark.parametrize("name,variant,dataset", RECIPES, ids=IDS)
def test_recipe_loads_and_documents_its_command(name, variant, dataset):
  config = _load(name, variant)
  assert config.dataset == dataset
  doc = importlib.import_module(f"configs.recipes.{name}").__doc__
  command = f"python -m unet_jax.main --config configs/recipes/{name}.py"
  assert command + (f":{variant}" if variant else "") in " ".join(doc.replace("\\\n", "").split())
  assert "Our result" in doc
  if dataset != "synthetic":
    assert "python -m unet_jax.data.prepare --dataset " + dataset in doc
  models.from_config(config)  # Every model field is a valid choice.


def test_recipe_numbers_follow_the_tutorials():
  camvid = _load("fastai_camvid", None)
  assert (camvid.schedule, camvid.optimizer, camvid.learning_rate, camvid.weight_decay) == (
      "one_cycle", "adamw", 3e-3, 1e-2)
  assert camvid.num_train_steps == math.ceil(12 * 367 / 8) and camvid.image_size == (256, 384)
  assert _load("fastai_camvid", "resnet34").model.arch == "resnet34_unet"
  keras = _load("keras_carvana", None)
  assert keras.image_size == (96, 128) and keras.loss == "dice" and keras.adam_eps == 1e-6
  assert tuple(keras.model.dropout) == (0, 0, 0, 0.3, 0.3) and keras.model.features == 64
  assert keras.early_stopping_patience == 2 and keras.eval_every_steps == 25
  paper = _load("paper_unet", None)
  assert (paper.model.padding, paper.num_classes, paper.loss) == ("VALID", 2, "softmax_ce")
  assert (paper.optimizer, paper.momentum) == ("sgd", 0.99)
  pyimage = _load("pyimagesearch_tgs", None)
  assert (pyimage.model.features, pyimage.model.depth, pyimage.model.norm) == (16, 2, "none")
  assert (pyimage.batch_size, pyimage.num_train_steps) == (64, 2000)
  assert _load("pytorch_unet", None).model.features == 64


def test_epochs_to_steps():
  assert epochs_to_steps(12, 367, 8) == 551
  assert epochs_to_steps(40, 3200, 64) == 2000
  assert steps_per_epoch(800, 32) == 25 and steps_per_epoch(5, 8) == 1


def test_unet_resize_output_is_the_raw_valid_output_resized():
  images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 1)), jnp.float32)
  raw = UNet(features=4, depth=2, norm="none", padding="VALID", overlap_tile=False)
  variables = jax.jit(raw.init)(INIT_KEY, images)
  raw_out = jax.jit(raw.apply)(variables, images)
  assert raw_out.shape == (2, 24, 24, 1)  # (pyimagesearch's 128x128 input gives 88x88.)
  for method in ("nearest", "bilinear"):
    resized = jax.jit(raw.clone(resize_output=method).apply)(variables, images)
    assert resized.shape == (2, 64, 64, 1)
    np.testing.assert_allclose(resized, jax.image.resize(raw_out, (2, 64, 64, 1), method),
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="overlap_tile=False"):
    jax.eval_shape(UNet(features=4, depth=2, padding="VALID", resize_output="nearest").init,
                   INIT_KEY, images)


def test_simple_encoder_decoder_has_no_skips_and_covers_odd_sizes():
  model = SimpleEncoderDecoder(num_classes=1, features=8, depth=3)
  variables = jax.jit(model.init)(INIT_KEY, jnp.zeros((1, 96, 128, 3)))
  assert sorted(variables["params"]) == ["down_0", "down_1", "down_2", "head", "up_0", "up_1",
                                         "up_2"]
  assert jax.jit(model.apply)(variables, jnp.zeros((2, 37, 50, 3))).shape == (2, 37, 50, 1)


# --- End to end on the real samples -------------------------------------------------------


@pytest.fixture(scope="module")
def tgs_data(tmp_path_factory):
  """TGS (20 pairs) prepared native (paper recipe) and resized to 64x64 (pyimagesearch)."""
  root = tmp_path_factory.mktemp("recipes_tgs")
  layout = _data_samples.tgs_layouts(shared_data_dir("tgs"), root, count=20)[1]
  for resolution in ("native", "64x64"):
    prepare.prepare("tgs", layout, root / "tfds", resolution)
  return root / "tfds"


@pytest.fixture(scope="module")
def carvana_data(tmp_path_factory):
  """Carvana (3 cars x 3 angles) prepared at 32x48."""
  root = tmp_path_factory.mktemp("recipes_carvana")
  layout = _data_samples.carvana_layouts(shared_data_dir("carvana"), root)[1]
  prepare.prepare("carvana", layout, root / "tfds", "32x48")
  return root / "tfds"


@pytest.fixture(scope="module")
def camvid_data(tmp_path_factory):
  """CamVid (4 train + 4 val pairs) prepared at 32x48."""
  root = tmp_path_factory.mktemp("recipes_camvid")
  layout = _data_samples.camvid_layout(shared_data_dir("camvid"), root)
  prepare.prepare("camvid", layout, root / "tfds", "32x48")
  return root / "tfds"


def _shrink(config, data_dir=None, image_size=None, **model):
  """Two train steps, one validation, a tiny batch; model fields as given."""
  config.unlock()
  if data_dir is not None:
    config.data_dir = str(data_dir)
  if image_size is not None:
    config.image_size = image_size
  config.synthetic.num_train, config.synthetic.num_val = 16, 4
  config.batch_size = config.eval_batch_size = 2
  config.num_train_steps = config.eval_every_steps = 2
  config.log_every_steps = 1
  for key, value in model.items():
    if key == "dropout":
      del config.model["dropout"]
    config.model[key] = value
  return config


def _train(config, workdir):
  scores = train.train_and_evaluate(config, workdir)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
  assert [r["split"] for r in records if r["step"] == 2] == ["train", "val"]
  assert np.isfinite(scores["loss"]) and 0 <= scores["pixel_accuracy"] <= 1
  assert (workdir / "best.json").exists()
  return scores


def test_fastai_camvid_trains_on_real_camvid(camvid_data, tmp_path):
  config = _shrink(_load("fastai_camvid", None), camvid_data, (32, 48), features=4, depth=2)
  scores = _train(config, tmp_path)
  assert "miou" in scores


def test_fastai_camvid_resnet34_takes_train_steps_on_real_camvid(camvid_data):
  # ResNet-34 cannot shrink, so only its train step compiles here (not eval and predict too):
  # the recipe's model, optimizer and loss, 2 steps on real CamVid batches from the pipeline.
  config = _shrink(_load("fastai_camvid", "resnet34"), camvid_data, (32, 48))
  model = models.from_config(config)
  assert isinstance(model, models.ResNetUNet) and model.arch == "resnet34"
  source = data.load_split(config, "train")
  batches = iter(pipeline.train_dataset(source, global_batch_size=2, seed=0,
                                        augment=augment.make_augment(config.augment)))
  state = jax.jit(lambda: steps.create_train_state(
      model, optim.make_optimizer(config, config.num_train_steps), source[0]["image"][None], 0))()
  train_step = steps.jit_steps(config)[0]
  losses = []
  for _ in range(2):
    batch = next(batches)
    assert batch["image"].shape == (2, 32, 48, 3) and batch["mask"].max() <= 11
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 2 and int(state.nonfinite_steps) == 0
  assert all(np.isfinite(losses)) and losses[0] > 0


@pytest.mark.parametrize("variant", [None, "simple"])
def test_keras_carvana_trains_on_real_carvana(variant, carvana_data, tmp_path):
  model = {"features": 4} if variant else {"features": 4, "depth": 2, "dropout": (0, .3, .3)}
  config = _shrink(_load("keras_carvana", variant), carvana_data, (32, 48), **model)
  assert config.early_stopping_patience == 2
  assert "dice" in _train(config, tmp_path)


def test_paper_unet_trains_on_real_tgs(tgs_data, tmp_path):
  config = _shrink(_load("paper_unet", None), tgs_data, features=4, depth=2)
  assert config.image_size == (101, 101)  # Native tiles; the model mirrors the border.
  assert "dice" in _train(config, tmp_path)


def test_pyimagesearch_tgs_trains_on_real_tgs(tgs_data, tmp_path):
  # The recipe's own network (16, 32, 64) on 64x64: raw VALID output 24x24, resized to 64x64.
  config = _shrink(_load("pyimagesearch_tgs", None), tgs_data, (64, 64))
  assert "tgs_map" in _train(config, tmp_path)


def test_pytorch_unet_trains_on_synthetic_shapes(tmp_path):
  config = _shrink(_load("pytorch_unet", None), image_size=(32, 32), features=4, depth=2)
  assert "dice" in _train(config, tmp_path)
