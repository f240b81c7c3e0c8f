"""Finding the image/mask pairs of a user's folder, and its train/val split (no decoding).

The default layout is DIR/images/<name>.<ext> with DIR/masks/<name>.<ext>; `Options` says
otherwise (globs relative to DIR, the mask name as a `{stem}` template). A DIR/train/ folder
holding that layout is used when DIR itself does not; a DIR/val/ folder holding it is the
val split, else a SHA-1 hash of each id (or of its group, `group_regex`) picks val.
Every failure is a one-line UserError naming the file and the fix.
"""

import dataclasses
import pathlib
import re

from unet_jax.data import builders
from unet_jax.data.downloads import Member
from unet_jax.errors import ConfigError, MissingDataError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp")  # Read as images.


@dataclasses.dataclass(frozen=True)
class Options:
  """How prepare reads a folder; stored with the prepared data and checked on reuse."""

  image_glob: str = "images/*"  # Images, relative to DIR (DIR/train, DIR/val).
  mask_glob: str = "masks/*"  # Masks, relative to the same folder.
  mask_name: str = "{stem}.*"  # A mask's file name from its image's stem; * = any extension.
  classes: str = ""  # '' = binary (mask > 0); else a class map (folder_masks.parse_classes).
  val_fraction: float = builders.VAL_FRACTION  # Share of ids (or groups) in val without val/.
  group_regex: str = ""  # Its first (or `group`) group of an id is the split key.

  def check(self) -> None:
    """A ConfigError for option values that cannot work."""
    if self.mask_name.count("{stem}") != 1 or "/" in self.mask_name:
      raise ConfigError(f"--mask_name {self.mask_name!r} must be a file name holding {{stem}} "
                        "once, e.g. '{stem}_mask.png' or '{stem}.*'")
    if not 0 < self.val_fraction < 1:
      raise ConfigError(f"--val_fraction {self.val_fraction} is not in (0, 1); use e.g. 0.2")
    if self.group_regex:
      try:
        re.compile(self.group_regex)
      except re.error as e:
        raise ConfigError(f"--group_regex {self.group_regex!r} is not a regex ({e}); fix it, "
                          r"e.g. '^(.+)_\d\d$'") from None


def _base(glob: str) -> str:
  """The folders of `glob` before its first wildcard: ids are paths relative to them."""
  parts = pathlib.PurePosixPath(glob).parent.parts
  fixed = []
  for part in parts:
    if any(c in part for c in "*?["):
      break
    fixed.append(part)
  return "/".join(fixed)


def _files(root: pathlib.Path, glob: str, exclude: pathlib.Path | None) -> list[pathlib.Path]:
  return sorted(p for p in root.glob(glob) if p.suffix.lower() in EXTENSIONS and p.is_file()
                and not (exclude and exclude in p.parents))


def _mask_name_regex(mask_name: str) -> re.Pattern:
  """'{stem}_mask.png' -> ^(?P<stem>.+)_mask\\.png$; '*' matches any characters."""
  prefix, suffix = (re.escape(part).replace(r"\*", ".*") for part in mask_name.split("{stem}"))
  return re.compile(f"^{prefix}(?P<stem>.+){suffix}$")


def _images(root, options, exclude):
  """{id: Member} of the images under `root`; the id is the path below the glob's folders."""
  base = root / _base(options.image_glob)
  images = {}
  for path in _files(root, options.image_glob, exclude):
    key = path.relative_to(base).with_suffix("").as_posix()
    if key in images:
      raise ConfigError(f"images {images[key]} and {path} have the same name {key!r}; rename "
                        "one, or narrow --image_glob (e.g. 'images/*.png')")
    images[key] = Member(str(path))
  return images


def _masks(root, options, exclude):
  """({id: Member}, [masks whose name does not fit --mask_name]) under `root`."""
  base, regex = root / _base(options.mask_glob), _mask_name_regex(options.mask_name)
  masks, unnamed = {}, []
  for path in _files(root, options.mask_glob, exclude):
    match = regex.match(path.name)
    if not match:
      unnamed.append(path)
      continue
    key = (path.parent.relative_to(base) / match.group("stem")).as_posix().removeprefix("./")
    if key in masks:
      raise ConfigError(f"masks {masks[key]} and {path} both fit image {key!r}; delete one, or "
                        "make --mask_name say the extension (e.g. '{stem}.png')")
    masks[key] = Member(str(path))
  return masks, unnamed


def find_pairs(root: pathlib.Path, options: Options, exclude=None) -> list[tuple]:
  """[(id, image Member, mask Member)] sorted by id; a one-line error for any unpaired file."""
  images = _images(root, options, exclude)
  if not images:
    raise MissingDataError(f"no images ({'/'.join(e[1:] for e in EXTENSIONS)}) match "
                           f"{root / options.image_glob}; put the images in {root / 'images'} "
                           f"and the masks in {root / 'masks'}, or pass --image_glob")
  masks, unnamed = _masks(root, options, exclude)
  if not masks and not unnamed:
    raise MissingDataError(f"no masks match {root / options.mask_glob} ({len(images)} images "
                           f"found); put the masks in {root / 'masks'}, or pass --mask_glob")
  lonely_images = sorted(set(images) - set(masks))
  lonely_masks = sorted(str(masks[k]) for k in set(masks) - set(images)) + sorted(map(str,
                                                                                   unnamed))
  if lonely_images or lonely_masks:
    problems = []
    if lonely_images:
      key = lonely_images[0]
      expected = options.mask_name.format(stem=pathlib.PurePosixPath(key).name)
      problems.append(f"{len(lonely_images)} of {len(images)} images have no mask (e.g. "
                      f"{images[key]}: no {expected} in {root / _base(options.mask_glob)})")
    if lonely_masks:
      problems.append(f"{len(lonely_masks)} of {len(masks) + len(unnamed)} masks have no image "
                      f"(e.g. {lonely_masks[0]})")
    raise MissingDataError("; ".join(problems) + "; add the missing files or delete the extras, "
                           f"or set --mask_name to how masks are named (now "
                           f"{options.mask_name!r})")
  return [(key, images[key], masks[key]) for key in sorted(images)]


def group_of(key: str, group_regex: re.Pattern | None) -> str | None:
  """The split key of an id: its `group` (or first) regex group; None where it does not match."""
  if group_regex is None:
    return key
  match = group_regex.search(key)
  if not match:
    return None
  if "group" in group_regex.groupindex:
    return match.group("group")
  return match.group(1) if group_regex.groups else match.group(0)


def hash_split(pairs, options: Options) -> dict[str, list]:
  """{'train', 'val'} of `pairs` by builders.hash_split of ids, or of their groups."""
  regex = re.compile(options.group_regex) if options.group_regex else None
  groups = {key: group_of(key, regex) for key, _, _ in pairs}
  unmatched = sorted(k for k, g in groups.items() if g is None)
  if unmatched:
    raise ConfigError(f"--group_regex {options.group_regex!r} does not match id "
                      f"{unmatched[0]!r} ({len(unmatched)} of {len(groups)} ids); make it match "
                      "every file name (without extension)")
  if len(set(groups.values())) < 2:
    raise ConfigError(f"{len(pairs)} pairs in {len(set(groups.values()))} group cannot be "
                      "split into train and val; add images, loosen --group_regex, or put the "
                      "val pairs in a val/ folder")
  val_groups = builders.hash_split(groups.values(), options.val_fraction)
  return {"train": [p for p in pairs if groups[p[0]] not in val_groups],
          "val": [p for p in pairs if groups[p[0]] in val_groups]}


def find_splits(manual_dir: pathlib.Path, options: Options) -> dict[str, list]:
  """{'train': pairs, 'val': pairs} of the folder, from val/ when it has one."""
  options.check()
  root = manual_dir
  if not (manual_dir / _base(options.image_glob)).is_dir() and (manual_dir / "train").is_dir():
    root = manual_dir / "train"  # DIR/train/images beside DIR/val/images.
  val_root = manual_dir / "val"
  if not (val_root / _base(options.image_glob)).is_dir():
    return hash_split(find_pairs(root, options), options)
  return {"train": find_pairs(root, options, exclude=val_root),
          "val": find_pairs(val_root, options)}
