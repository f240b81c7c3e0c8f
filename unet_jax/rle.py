"""Run-length encoding of binary masks in the two Kaggle submission formats.

A run-length string is space-separated `start length` pairs with 1-indexed starts over the
flattened mask; an empty mask is the empty string.
- TGS Salt: COLUMN-major (top to bottom, then left to right), header `id,rle_mask`.
- Carvana: ROW-major (left to right, then top to bottom), header `img,rle_mask`.
"""

import csv

import numpy as np

ORDERS = {"tgs": "F", "carvana": "C"}  # numpy flattening order of each format.
HEADERS = {"tgs": ("id", "rle_mask"), "carvana": ("img", "rle_mask")}


def _order(order: str) -> str:
  order = ORDERS.get(order, order)
  if order not in ("C", "F"):
    raise ValueError(f"unknown RLE order {order!r}; use 'tgs'/'F' (column-major) or "
                     "'carvana'/'C' (row-major)")
  return order


def encode(mask, order: str = "C") -> str:
  """The RLE string of a 2-D mask (nonzero = foreground); `order` 'C'/'carvana' or 'F'/'tgs'."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f"RLE needs a 2-D mask, got shape {mask.shape}")
  pixels = np.concatenate([[False], mask.ravel(order=_order(order)) != 0, [False]])
  changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-indexed run starts and ends.
  starts, ends = changes[::2], changes[1::2]
  runs = np.empty(2 * len(starts), np.int64)
  runs[::2], runs[1::2] = starts, ends - starts
  return " ".join(map(str, runs))


def _parse(rle: str) -> np.ndarray:
  if not isinstance(rle, str):
    raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
  tokens = rle.split()
  if len(tokens) % 2:
    raise ValueError(f"malformed RLE: odd number of numbers ({len(tokens)}); it must be "
                     "'start length' pairs")
  try:
    return np.asarray([int(t) for t in tokens], np.int64).reshape(-1, 2)
  except ValueError:
    bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
    raise ValueError(f"malformed RLE: {bad!r} is not an integer") from None


def decode(rle: str, shape: tuple[int, int], order: str = "C") -> np.ndarray:
  """The uint8 {0, 1} mask of `shape` (height, width) that `rle` describes.

  Raises ValueError naming the problem for a malformed string: non-integers, an odd count,
  starts < 1, lengths < 1, overlapping or unsorted runs, runs past the end of the mask.
  """
  runs = _parse(rle)
  size = int(np.prod(shape))
  flat = np.zeros(size, np.uint8)
  if len(runs):
    starts, lengths = runs[:, 0], runs[:, 1]
    if (starts < 1).any():
      raise ValueError(f"malformed RLE: start {starts[starts < 1][0]} < 1 (starts are 1-indexed)")
    if (lengths < 1).any():
      raise ValueError(f"malformed RLE: run length {lengths[lengths < 1][0]} < 1")
    ends = starts - 1 + lengths
    if (starts[1:] <= ends[:-1]).any():
      i = int(np.flatnonzero(starts[1:] <= ends[:-1])[0]) + 1
      raise ValueError(f"malformed RLE: run {i + 1} (start {starts[i]}) overlaps or precedes "
                       "the run before it; starts must increase")
    if ends[-1] > size:
      raise ValueError(f"malformed RLE: the last run ends at pixel {ends[-1]} but a "
                       f"{shape[0]}x{shape[1]} mask has {size} pixels")
    marks = np.zeros(size + 1, np.int32)
    np.add.at(marks, starts - 1, 1)
    np.add.at(marks, ends, -1)
    flat = np.cumsum(marks[:-1]).astype(np.uint8)
  return flat.reshape(shape, order=_order(order))


def write_submission(path, rows, fmt: str) -> None:
  """Writes (id, rle) rows under the header of `fmt` ('tgs' or 'carvana')."""
  if fmt not in HEADERS:
    raise ValueError(f"unknown submission format {fmt!r}; use tgs or carvana")
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(HEADERS[fmt])
    writer.writerows(rows)


def read_submission(path) -> tuple[tuple[str, str], list[tuple[str, str]]]:
  """(header, rows) of a run-length CSV; an empty mask reads as ''."""
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f)
    header = tuple(next(reader))
    return header, [(row[0], row[1] if len(row) > 1 else "") for row in reader]
