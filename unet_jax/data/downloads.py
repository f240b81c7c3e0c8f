"""Finding the files of a manual download, whether its Kaggle zips are still zipped or extracted.

A `Pattern` names where a kind of file may live (folders and zips, first match wins) and a regex
whose `id` group keys each file; `find` returns {id: Member}. Every failure is a one-line
UserError naming the file and the fix.
"""

import csv
import dataclasses
import functools
import pathlib
import re
import zipfile

from unet_jax.errors import MissingDataError, UserError


class BadDataError(UserError, ValueError):
  """A file of the download exists but cannot be used (corrupt, wrong size, wrong values)."""


@functools.lru_cache(maxsize=16)
def _open_zip(path: str) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise BadDataError(f"{path} is not a readable zip ({e}); the download is probably "
                       "truncated: download it again") from None


@dataclasses.dataclass(frozen=True)
class Member:
  """One file of a download: a plain file, or `inner` inside the zip at `path`."""

  path: str
  inner: str = ""

  def __str__(self) -> str:
    return f"{self.path}:{self.inner}" if self.inner else self.path

  def read(self) -> bytes:
    if not self.inner:
      return pathlib.Path(self.path).read_bytes()
    try:
      return _open_zip(self.path).read(self.inner)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise BadDataError(f"cannot read {self} ({e}); download the zip again") from None


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A kind of file: where it may be (folders or .zip files) and its path regex."""

  what: str  # e.g. "TGS mask", for messages.
  places: tuple[str, ...]  # Relative to manual_dir, tried in order; '.zip' names are archives.
  regex: str  # Searched in the path relative to the place's parent; group `id` is the key.
  example: str  # e.g. "train/masks/<id>.png", for messages.


def check_manual_dir(manual_dir, dataset: str, expected: str) -> pathlib.Path:
  """The manual_dir as a Path, or a MissingDataError saying what to put there."""
  if not manual_dir:
    raise MissingDataError(f"{dataset}: no --manual_dir given; pass the folder that holds "
                           f"{expected}")
  path = pathlib.Path(manual_dir).expanduser()
  if not path.is_dir():
    raise MissingDataError(f"{dataset}: manual_dir {path} does not exist; download "
                           f"{expected} into it, or pass the folder that holds them")
  return path


def _search_folder(folder: pathlib.Path, regex: re.Pattern) -> dict[str, Member]:
  found = {}
  for path in sorted(folder.rglob("*")):
    match = regex.search(path.relative_to(folder.parent).as_posix())
    if match and path.is_file():
      found[match.group("id")] = Member(str(path))
  return found


def _search_zip(path: pathlib.Path, regex: re.Pattern) -> dict[str, Member]:
  found = {}
  for name in sorted(_open_zip(str(path)).namelist()):
    match = regex.search(name)
    if match and not name.endswith("/"):
      found[match.group("id")] = Member(str(path), name)
  return found


def find(manual_dir: pathlib.Path, pattern: Pattern) -> dict[str, Member]:
  """{id: Member} from the first place of `pattern` that holds any matching file."""
  regex = re.compile(pattern.regex)
  searched = []
  for place in pattern.places:
    path = manual_dir / place
    if path.is_dir():
      found = _search_folder(path, regex)
    elif path.is_file() and place.endswith(".zip"):
      found = _search_zip(path, regex)
    else:
      continue
    if found:
      return found
    searched.append(place)
  if any(place.endswith(".zip") for place in searched):
    zips = " or ".join(p for p in searched if p.endswith(".zip"))
    raise MissingDataError(f"{manual_dir / zips} has no {pattern.example} members, so it is not "
                           f"the original download; download {zips} again")
  where = " or ".join(pattern.places)
  raise MissingDataError(f"no {pattern.what} files ({pattern.example}) in {manual_dir}; put "
                         f"{where} from the original download there")


def pair(images: dict[str, Member], masks: dict[str, Member], mask_pattern: Pattern):
  """[(id, image, mask)] sorted by id; an image without a mask is an error naming both."""
  missing = sorted(set(images) - set(masks))
  if missing:
    raise MissingDataError(
        f"image {images[missing[0]]} has no mask ({mask_pattern.example} with <id> = "
        f"{missing[0]}; {len(missing)} of {len(images)} images lack one); restore the masks "
        "from the original download, or delete the images that have none")
  return [(key, images[key], masks[key]) for key in sorted(images)]


def read_csv_column(manual_dir: pathlib.Path, name: str, key: str, column: str) -> dict:
  """{row[key]: row[column]} of the csv `name` in manual_dir, or a one-line error."""
  path = manual_dir / name
  if not path.is_file():
    raise MissingDataError(f"{path} is missing; put {name} from the original download in "
                           f"{manual_dir}")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or key not in reader.fieldnames or column not in reader.fieldnames:
      raise BadDataError(f"{path} has columns {reader.fieldnames}, expected {key},{column}; "
                         f"download {name} again")
    return {row[key]: row[column] for row in reader}
