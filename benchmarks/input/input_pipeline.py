"""Input pipeline throughput: the grain pipeline vs a seed-style PyTorch DataLoader.

  python benchmarks/input/input_pipeline.py [--seconds 10] [--repeats 3]

Both read the real samples in ../shared/data (UNET_JAX_SHARED_DATA) on the same cores:
- grain: `python -m unet_jax.data.prepare` output (Carvana pre-resized to 256x384 JPEG, TGS
  native 101x101 padded to 128) -> unet_jax.data.pipeline.train_dataset with the training
  config's augmentation, uint8 batches (normalised later on the device).
- seed: the Kaggle tutorials' torch Dataset + DataLoader: per item cv2.imread of the original
  file (1918x1280 JPEG / 101x101 PNG), PIL for the GIF mask, cv2.resize, random flip, float
  tensors; num_workers = cores.
Runs alternate (grain, seed, grain, ...) and each keeps its best of --repeats, because other
jobs may share the machine; the load average is recorded. The train step's own rate on this
machine says whether the pipeline can feed it. Writes
benchmarks/results/<device-slug>/input_pipeline.{json,md}.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import cv2  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position
from torch.utils import data as torch_data  # pylint: disable=wrong-import-position

SHARED = pathlib.Path(os.environ.get("UNET_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results"
BATCH = {"carvana": 16, "tgs": 32}


def device_slug() -> dict:
  """The CPU (or GPU) and its slug, as benchmarks/machine.py names result folders."""
  try:
    from benchmarks import machine  # pylint: disable=import-outside-toplevel
    return machine.detect_device()
  except ImportError:
    import platform  # pylint: disable=import-outside-toplevel
    import re  # pylint: disable=import-outside-toplevel
    name = platform.processor() or platform.machine()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      name = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")),
                  name)
    cores = len(os.sched_getaffinity(0))
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return {"platform": "cpu", "name": name, "slug": f"cpu-{slug}-{cores}c", "cores": cores}


class SeedCarvana(torch_data.Dataset):
  """The Carvana tutorials' Dataset: decode the 1918x1280 JPEG and GIF, resize, flip, floats."""

  def __init__(self, root: pathlib.Path, size=(256, 384)):
    self.images = sorted((root / "train").glob("*.jpg"))
    self.masks = [root / "train_masks" / f"{p.stem}_mask.gif" for p in self.images]
    self.size = size

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    image = cv2.cvtColor(cv2.imread(str(self.images[index])), cv2.COLOR_BGR2RGB)
    mask = np.array(Image.open(self.masks[index]), np.uint8)
    image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, self.size[::-1], interpolation=cv2.INTER_NEAREST)
    if np.random.rand() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
    return image, torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


class SeedTgs(torch_data.Dataset):
  """The TGS tutorials' Dataset: read the 101x101 PNGs, resize to 128, flip, floats."""

  def __init__(self, root: pathlib.Path, size=(128, 128)):
    self.images = sorted((root / "train" / "images").glob("*.png"))
    self.masks = [root / "train" / "masks" / p.name for p in self.images]
    self.size = size

  def __len__(self):
    return len(self.images)

  def __getitem__(self, index):
    image = cv2.imread(str(self.images[index]), cv2.IMREAD_GRAYSCALE)
    mask = (cv2.imread(str(self.masks[index]), cv2.IMREAD_UNCHANGED) > 0).astype(np.uint8)
    image = cv2.resize(image, self.size[::-1], interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, self.size[::-1], interpolation=cv2.INTER_NEAREST)
    if np.random.rand() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    image = torch.from_numpy(np.ascontiguousarray(image)).float()[None] / 255.0
    return image, torch.from_numpy(np.ascontiguousarray(mask)).float()[None]


def _rate(next_batch, batch_size: int, seconds: float, warmup: int = 3) -> float:
  """Images per second of `next_batch()` over about `seconds`, after `warmup` batches."""
  for _ in range(warmup):
    next_batch()
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next_batch()
    count += 1
  return count * batch_size / (time.perf_counter() - start)


def _endless(loader):
  while True:
    yield from loader


def seed_rate(dataset_name: str, seconds: float, workers: int) -> float:
  dataset = (SeedCarvana(SHARED / "carvana") if dataset_name == "carvana"
             else SeedTgs(SHARED / "tgs"))
  loader = torch_data.DataLoader(dataset, batch_size=BATCH[dataset_name], shuffle=True,
                                 num_workers=workers, drop_last=True, persistent_workers=True)
  batches = _endless(loader)
  rate = _rate(lambda: next(batches), BATCH[dataset_name], seconds)
  del batches, loader
  return rate


def training_config(dataset_name: str, data_dir):
  from configs import carvana, tgs  # pylint: disable=import-outside-toplevel
  config = (carvana if dataset_name == "carvana" else tgs).get_config()
  config.data_dir = str(data_dir)
  return config


def grain_rate(dataset_name: str, data_dir, seconds: float, augment: str, workers: int,
               threads: int, memory_cache: bool = True) -> float:
  """images/s of the grain training stream; augment 'config' (the recipe) or 'flip';
  memory_cache False decodes the stored PNG/JPEG for every element (cache_decoded_mb=0)."""
  from unet_jax import data  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from unet_jax.data import augment as augment_lib, pipeline
  config = training_config(dataset_name, data_dir)
  if augment == "flip":
    config.augment.update(rotation_degrees=0.0, scale=0.0, brightness=0.0, contrast=0.0)
  if not memory_cache:
    config.cache_decoded_mb = 0
  dataset = pipeline.train_dataset(
      data.load_split(config, "train"), global_batch_size=BATCH[dataset_name], seed=0,
      augment=augment_lib.make_augment(config.augment), num_workers=workers,
      num_threads=threads, prefetch=config.prefetch)
  iterator = iter(dataset)
  return _rate(lambda: next(iterator), BATCH[dataset_name], seconds)


def train_step_rate(dataset_name: str, data_dir, batch_size: int, steps: int = 2) -> dict:
  """images/s of the jitted train step alone (the config's model) on this machine's device.

  On a CPU the step is so slow that a small batch is timed (the rate per image barely moves).
  """
  import jax  # pylint: disable=import-outside-toplevel
  # pylint: disable=import-outside-toplevel
  from unet_jax import data, models, optim, steps as steps_lib
  config = training_config(dataset_name, data_dir)
  config.batch_size = batch_size
  source = data.load_split(config, "train")
  batch = {k: np.stack([source[i % len(source)][k] for i in range(config.batch_size)])
           for k in ("image", "mask")}
  model = models.from_config(config)
  state = steps_lib.create_train_state(model, optim.make_optimizer(config, 100),
                                       batch["image"][:1], 0)
  train_step, _, _ = steps_lib.jit_steps(config)
  batch = jax.device_put(batch)
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  rate = steps * config.batch_size / (time.perf_counter() - start)
  return {"images_per_second": rate, "batch_size": config.batch_size,
          "image_size": list(config.image_size), "device": str(jax.devices()[0])}


def prepare_all(data_dir) -> dict:
  from unet_jax.data import prepare  # pylint: disable=import-outside-toplevel
  seconds = {}
  for name, resolution in (("carvana", "256x384"), ("tgs", "native")):
    start = time.perf_counter()
    builder = prepare.prepare(name, SHARED / name, data_dir, resolution=resolution)
    seconds[name] = {"seconds": time.perf_counter() - start, "resolution": resolution,
                     "examples": {k: v.num_examples for k, v in builder.info.splits.items()}}
  return seconds


def run(args) -> dict:
  device = device_slug()
  cores = len(os.sched_getaffinity(0))
  data_dir = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="input_pipeline_"))
  report = {"device": device, "cores": cores, "loadavg_start": list(os.getloadavg()),
            "seconds_per_run": args.seconds, "repeats": args.repeats,
            "prepare": prepare_all(data_dir), "datasets": {}}
  grain_variants = {"grain_threads_config_aug": ("config", 0, cores, True),
                    "grain_threads_flip_only": ("flip", 0, cores, True),
                    "grain_threads_flip_only_decode_each_time": ("flip", 0, cores, False),
                    "grain_workers_config_aug": ("config", cores, 1, True)}
  for name in ("carvana", "tgs"):
    best = {}
    for repeat in range(args.repeats):
      for variant, (augment, workers, threads, cache) in grain_variants.items():
        rate = grain_rate(name, data_dir, args.seconds, augment, workers, threads, cache)
        best[variant] = max(best.get(variant, 0.0), rate)
        print(f"{name} {variant} run {repeat}: {rate:.0f} images/s", flush=True)
      rate = seed_rate(name, args.seconds, cores)
      best["seed_torch_dataloader"] = max(best.get("seed_torch_dataloader", 0.0), rate)
      print(f"{name} seed run {repeat}: {rate:.0f} images/s", flush=True)
    on_cpu = report["device"]["platform"] == "cpu"
    step = train_step_rate(name, data_dir, batch_size=2 if on_cpu else BATCH[name])
    print(f"{name} train step on {step['device']}: {step['images_per_second']:.1f} images/s")
    grain_best = max(v for k, v in best.items() if k.startswith("grain"))
    report["datasets"][name] = {
        "batch_size": BATCH[name], "images_per_second": best,
        "ratio_best_grain_vs_seed": grain_best / best["seed_torch_dataloader"],
        "ratio_config_aug_threads_vs_seed":
            best["grain_threads_config_aug"] / best["seed_torch_dataloader"],
        "train_step": step, "pipeline_vs_train_step": grain_best / step["images_per_second"]}
  report["loadavg_end"] = list(os.getloadavg())
  return report


def _loads(values) -> str:
  return " ".join(f"{v:.1f}" for v in values)


def markdown(report: dict) -> str:
  lines = [
      "# Input pipeline: grain vs seed-style PyTorch DataLoader",
      "",
      f"- Device: {report['device']['name']} (`{report['device']['slug']}`), "
      f"{report['cores']} cores used by both loaders.",
      f"- Load average at start / end: {_loads(report['loadavg_start'])} / "
      f"{_loads(report['loadavg_end'])} "
      "(other jobs share this machine; each number is the best of "
      f"{report['repeats']} alternating runs of {report['seconds_per_run']} s).",
      "- grain: prepared array_record (Carvana 256x384 JPEG q95 cache, TGS native PNG padded to "
      "128), `pipeline.train_dataset`, uint8 batches; `config aug` = the training config's "
      "augmentation (Carvana: flip, rotation 3.6 deg, contrast 0.2; TGS: flip, zoom 0.1, "
      "brightness 0.05, contrast 0.1), `flip only` = the seed loader's work. Splits that fit "
      "`cache_decoded_mb` (default 2048) are decoded once into RAM at start; "
      "`decode_each_time` turns that off (the stored PNG/JPEG decoded per element).",
      "- seed: torch `Dataset` + `DataLoader(num_workers=cores)` decoding the original files "
      "per item (cv2 JPEG/PNG, PIL GIF), cv2.resize, random flip, float tensors.",
      "",
      "| dataset | loader | images/s |",
      "|---|---|---:|",
  ]
  for name, result in report["datasets"].items():
    for variant, rate in result["images_per_second"].items():
      lines.append(f"| {name} (batch {result['batch_size']}) | {variant} | {rate:.0f} |")
  lines += ["", "| dataset | best grain / seed | grain (threads, config aug) / seed | "
            "train step images/s (device) | best grain / train step |", "|---|---:|---:|---|---:|"]
  for name, result in report["datasets"].items():
    step = result["train_step"]
    lines.append(f"| {name} | {result['ratio_best_grain_vs_seed']:.1f}x | "
                 f"{result['ratio_config_aug_threads_vs_seed']:.1f}x | "
                 f"{step['images_per_second']:.1f} ({step['device']}, batch {step['batch_size']}"
                 f", {step['image_size'][0]}x{step['image_size'][1]}) | "
                 f"{result['pipeline_vs_train_step']:.0f}x |")
  per_core = {name: max(v for k, v in r["images_per_second"].items() if k.startswith("grain"))
              / report["cores"] for name, r in report["datasets"].items()}
  lines += ["", "Per core (best grain / cores, what a bigger host multiplies): " + ", ".join(
      f"{name} {rate:.0f} images/s/core" for name, rate in per_core.items()) + "."]
  lines += ["", "Prepare (once): " + ", ".join(
      f"{k} {v['resolution']} {v['examples']} in {v['seconds']:.1f} s"
      for k, v in report["prepare"].items()), ""]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seconds", type=float, default=8.0, help="Length of one timed run.")
  parser.add_argument("--repeats", type=int, default=2, help="Alternating runs per loader.")
  parser.add_argument("--data_dir", default="", help="Prepared data (default: a temp dir).")
  parser.add_argument("--out_dir", default=str(RESULTS), help="Results root.")
  args = parser.parse_args()
  for name in ("carvana", "tgs"):
    if not (SHARED / name).is_dir():
      sys.exit(f"error: real {name} samples not found in {SHARED}; set UNET_JAX_SHARED_DATA")
  report = run(args)
  out = pathlib.Path(args.out_dir) / report["device"]["slug"]
  out.mkdir(parents=True, exist_ok=True)
  (out / "input_pipeline.json").write_text(json.dumps(report, indent=2) + "\n")
  (out / "input_pipeline.md").write_text(markdown(report))
  print(markdown(report))
  print(f"wrote {out}/input_pipeline.{{json,md}}")


if __name__ == "__main__":
  main()
