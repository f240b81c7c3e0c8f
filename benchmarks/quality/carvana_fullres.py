"""Carvana at full resolution: a run's validation cars predicted at 1918x1280, scored against
the original GIF masks, beside its score at the training resolution.

  python benchmarks/quality/carvana_fullres.py --workdir runs/carvana \\
      --manual_dir ../shared/data/carvana_40cars --out benchmarks/results/<device>

The validation cars are the ones the carvana builder held out (SHA-1 of the car id), so the
model never saw them. `unet_jax.predict` writes each mask at the photo's own size (probabilities
resized back, thresholded at 0.5), as a Kaggle submission is made; Dice is computed over all
pixels of the split (as evaluate does) and per image (the competition's mean). Writes
carvana_fullres.{json,md}.
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
# pylint: disable=wrong-import-position
from unet_jax import evaluate, inference, predict
from unet_jax.data import builders, carvana, downloads, imaging

def validation_pairs(manual_dir: pathlib.Path):
  """[(id, image Member, mask Member)] of the cars the builder puts in 'val'."""
  pairs = downloads.pair(downloads.find(manual_dir, carvana.IMAGES),
                         downloads.find(manual_dir, carvana.MASKS), carvana.MASKS)
  val_cars = builders.hash_split(carvana.car_id(key) for key, _, _ in pairs)
  return [p for p in pairs if carvana.car_id(p[0]) in val_cars]


def dice_scores(predicted_dir: pathlib.Path, pairs) -> dict:
  """Global and per-image mean Dice of the predicted PNG masks against the GIFs."""
  intersection = total = 0
  per_image = []
  for key, _, mask_member in pairs:
    truth = imaging.palette_mask(imaging.open_image(mask_member.read(), mask_member), mask_member)
    predicted = np.asarray(Image.open(predicted_dir / f"{key}.png")) > 0
    both, size = int(np.sum(predicted & (truth > 0))), int(predicted.sum() + truth.sum())
    intersection, total = intersection + both, total + size
    per_image.append(2 * both / size if size else 1.0)
  return {"dice": 2 * intersection / total, "dice_mean_per_image": float(np.mean(per_image)),
          "images": len(pairs), "size": list(truth.shape)}


def run(workdir, manual_dir, out, tta: str = "none") -> dict:
  """Predicts the validation cars at full size, scores both ways, writes the report."""
  pairs = validation_pairs(pathlib.Path(manual_dir).expanduser())
  with tempfile.TemporaryDirectory() as tmp:
    inputs, outputs = pathlib.Path(tmp, "in"), pathlib.Path(tmp, "out")
    inputs.mkdir()
    for key, image_member, _ in pairs:
      (inputs / f"{key}.jpg").symlink_to(pathlib.Path(image_member.path).absolute())
    predict.predict(workdir, inputs, outputs, predict.Options(tta=tta))
    full = dice_scores(outputs, pairs)
  trained = evaluate.evaluate_run(workdir, "val", tta=tta,
                                  output_dir=pathlib.Path(workdir) / "eval")
  size = list(inference.load_config(workdir).image_size)
  report = {"workdir": str(workdir), "step": trained["step"], "tta": tta,
            "training_resolution": {"size": size, "dice": trained["scores"]["dice"],
                                    "examples": trained["examples"]},
            "full_resolution": full, "difference": full["dice"] - trained["scores"]["dice"]}
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  (out / "carvana_fullres.json").write_text(json.dumps(report, indent=2) + "\n")
  lines = [f"# Carvana validation cars at full resolution ({workdir}, step {report['step']}, "
           f"TTA {tta})", "",
           "| scored at | images | Dice (all pixels) | mean Dice per image |", "|---|---|---|---|",
           f"| {size[1]}x{size[0]}, the training resolution (evaluate) | {trained['examples']} | "
           f"{trained['scores']['dice']:.4f} | |",
           f"| {full['size'][1]}x{full['size'][0]} vs the original GIFs (predict) | "
           f"{full['images']} | {full['dice']:.4f} | {full['dice_mean_per_image']:.4f} |", "",
           f"Difference (full - training resolution): {report['difference']:+.4f}"]
  (out / "carvana_fullres.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return report


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="A Carvana training run.")
  parser.add_argument("--manual_dir", required=True, help="The Carvana download the run was "
                      "prepared from (train/ and train_masks/).")
  parser.add_argument("--out", required=True, help="Folder for carvana_fullres.{json,md}.")
  parser.add_argument("--tta", default="none", choices=["none", "flip"])
  args = parser.parse_args()
  run(args.workdir, args.manual_dir, args.out, args.tta)
