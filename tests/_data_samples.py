"""Small copies of the real samples in their download layouts (zips or folders), for builds."""

import pathlib
import shutil
import zipfile

import numpy as np
from PIL import Image


def copy_files(files, source_root: pathlib.Path, target_root: pathlib.Path) -> pathlib.Path:
  """Copies `files` (paths relative to source_root) keeping their relative layout."""
  for name in files:
    target = target_root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_root / name, target)
  return target_root


def write_zip(zip_path: pathlib.Path, files, source_root: pathlib.Path, arcname=lambda n: n):
  """A zip of `files` (relative to source_root), members named `arcname(name)`."""
  zip_path.parent.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
    for name in files:
      archive.write(source_root / name, arcname(name))
  return zip_path


def tgs_ids(tgs_dir: pathlib.Path, count: int) -> list[str]:
  return sorted(p.stem for p in (tgs_dir / "train" / "images").glob("*.png"))[:count]


def tgs_layouts(tgs_dir: pathlib.Path, root: pathlib.Path, count: int = 50):
  """(zip_dir, folder_dir) with the first `count` TGS pairs as Kaggle ships them."""
  ids = tgs_ids(tgs_dir, count)
  files = [f"train/{kind}/{i}.png" for i in ids for kind in ("images", "masks")]
  zip_dir, folder_dir = root / "tgs_zip", root / "tgs_folders"
  # Kaggle's train.zip holds images/ and masks/ at its top level.
  write_zip(zip_dir / "train.zip", files, tgs_dir, arcname=lambda n: n[len("train/"):])
  copy_files(files, tgs_dir, folder_dir)
  for layout in (zip_dir, folder_dir):
    copy_files(["depths.csv", "train.csv"], tgs_dir, layout)
  return zip_dir, folder_dir


def carvana_layouts(carvana_dir: pathlib.Path, root: pathlib.Path, angles=("01", "05", "09")):
  """(zip_dir, folder_dir) with a few angles of every sample car, as Kaggle ships them."""
  cars = sorted({p.stem.rsplit("_", 1)[0] for p in (carvana_dir / "train").glob("*.jpg")})
  images = [f"train/{c}_{a}.jpg" for c in cars for a in angles]
  masks = [f"train_masks/{c}_{a}_mask.gif" for c in cars for a in angles]
  zip_dir, folder_dir = root / "carvana_zip", root / "carvana_folders"
  write_zip(zip_dir / "train.zip", images, carvana_dir)
  write_zip(zip_dir / "train_masks.zip", masks, carvana_dir)
  copy_files(images + masks, carvana_dir, folder_dir)
  return zip_dir, folder_dir


def camvid_layout(camvid_dir: pathlib.Path, root: pathlib.Path, per_split: int = 4):
  """A SegNet-layout folder with the first `per_split` pairs of train and val."""
  files = []
  for split in ("train", "val"):
    names = sorted(p.name for p in (camvid_dir / split).glob("*.png"))[:per_split]
    files += [f"{split}/{n}" for n in names] + [f"{split}annot/{n}" for n in names]
  return copy_files(files, camvid_dir, root / "camvid")


def save_binary_mask(source: pathlib.Path, target: pathlib.Path, high: int = 255):
  """A TGS mask (16-bit {0, 65535} or 8-bit zeros) re-saved as 8-bit {0, high}."""
  mask = np.asarray(Image.open(source)) > 0
  target.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(mask.astype(np.uint8) * np.uint8(high)).save(target)


def tgs_folder(tgs_dir: pathlib.Path, root: pathlib.Path, ids) -> pathlib.Path:
  """DIR/images/<id>.png as shipped, DIR/masks/<id>.png re-saved as 0/255 8-bit PNG."""
  copy_files([f"images/{i}.png" for i in ids], tgs_dir / "train", root)
  for i in ids:
    save_binary_mask(tgs_dir / "train" / "masks" / f"{i}.png", root / "masks" / f"{i}.png")
  return root
