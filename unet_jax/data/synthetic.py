"""Generated shapes over noise: the embedded default dataset, no download needed.

Each example is drawn from its own seed (dataset seed, index), so the set is deterministic,
random-access and costs no memory until read. Binary mode labels every shape 1; multi-class
mode labels circles 1, squares 2, triangles 3 and crosses 4 (background 0).
"""

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross")


def _shape_mask(kind: str, yy, xx, cy: float, cx: float, r: float):
  dy, dx = yy - cy, xx - cx
  if kind == "circle":
    return dy**2 + dx**2 <= r**2
  if kind == "square":
    return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
  if kind == "triangle":  # apex up, base at cy + r/2
    return (dy <= r / 2) & (dy >= -r) & (np.abs(dx) <= (dy + r) / np.sqrt(3))
  if kind == "cross":
    arm = r / 3
    return ((np.abs(dy) <= r) & (np.abs(dx) <= arm)) | ((np.abs(dx) <= r) & (np.abs(dy) <= arm))
  raise ValueError(f"unknown shape {kind!r}")


def draw_example(rng: np.random.Generator, height: int, width: int, max_shapes: int,
                 multiclass: bool) -> dict[str, np.ndarray]:
  """One RGB uint8 image (H, W, 3) and its uint8 mask (H, W)."""
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  background = rng.uniform(0.2, 0.6, size=3)
  image = background + rng.normal(0.0, 0.12, size=(height, width, 3))
  mask = np.zeros((height, width), np.uint8)
  for _ in range(rng.integers(1, max_shapes + 1)):
    kind = rng.integers(len(SHAPES))
    r = rng.uniform(0.08, 0.2) * min(height, width)
    cy, cx = rng.uniform(r, height - r), rng.uniform(r, width - r)
    region = _shape_mask(SHAPES[kind], yy, xx, cy, cx, r)
    # Each shape is brighter or darker than the background in every channel by >= 0.15.
    shift = rng.uniform(0.15, 0.4, size=3) * rng.choice([-1.0, 1.0])
    image[region] = background + shift + rng.normal(0.0, 0.12, size=(int(region.sum()), 3))
    mask[region] = kind + 1 if multiclass else 1
  image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
  return {"image": image, "mask": mask}


class SyntheticShapes:
  """A grain-compatible random-access source of generated shape images."""

  def __init__(self, num_examples: int, image_size: tuple[int, int], seed: int,
               multiclass: bool = False, max_shapes: int = 4):
    self.num_examples = num_examples
    self.height, self.width = image_size
    self.seed = seed
    self.multiclass = multiclass
    self.max_shapes = max_shapes

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    rng = np.random.default_rng((self.seed, index))
    return draw_example(rng, self.height, self.width, self.max_shapes, self.multiclass)

  def __repr__(self) -> str:
    return (f"SyntheticShapes(n={self.num_examples}, size={self.height}x{self.width}, "
            f"seed={self.seed}, multiclass={self.multiclass})")


def num_classes(multiclass: bool) -> int:
  """Model output channels: 1 (sigmoid) for binary, background + one per shape otherwise."""
  return len(SHAPES) + 1 if multiclass else 1
