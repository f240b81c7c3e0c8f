"""K-fold cross-validation splits of a prepared dataset: a pure function of (id, K, k).

With `config.num_folds = K > 0` the prepared train and val records are pooled and fold
`config.fold` is held out for validation (with `config.fold_holdout` only the train records are
folded, and the val records stay a test set no fold trains on: split 'holdout'). Folds are
dealt per group so near-duplicates never straddle a split (Carvana: the 16 angles of a car;
CamVid: a video sequence), and within each stratum so every fold gets its share of each (TGS:
salt coverage in 11 bins, 0 = empty, as the Kaggle kernels stratified). Order inside a stratum is by SHA-1 of the group: deterministic,
independent of listing order, of any RNG and of the machine.
"""

import collections
import hashlib
import re

import numpy as np

from unet_jax.data import carvana, folder_layout, imaging
from unet_jax.errors import ConfigError

GROUP_NAMES = {"carvana": "cars", "camvid": "sequences", "tgs": "images"}  # For messages.
COVERAGE_BINS = 10  # TGS strata: ceil(10 * salt fraction) -> 0 (empty) .. 10.


def _sha1(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()


def deal_folds(groups: dict[str, int], num_folds: int) -> dict[str, int]:
  """{group: fold}: within each stratum, groups in SHA-1 order dealt to folds 0..K-1 in turn.

  Each stratum starts where the last one stopped, so fold sizes differ by at most one group.
  """
  by_stratum = collections.defaultdict(list)
  for group, stratum in groups.items():
    by_stratum[stratum].append(group)
  folds, position = {}, 0
  for stratum in sorted(by_stratum):
    for group in sorted(by_stratum[stratum], key=_sha1):
      folds[group] = position % num_folds
      position += 1
  return folds


def group_key(dataset: str, example_id: str, group_regex: str = "") -> str:
  """What must stay on one side of a split: the car, the video sequence, the group of a
  folder dataset's --group_regex, or the image."""
  group = folder_layout.group_of(example_id, re.compile(group_regex)) if group_regex else None
  if group is not None:
    return group
  if dataset == "carvana":
    return carvana.car_id(example_id)
  if dataset == "camvid":
    return example_id.split("_", 1)[0]  # 0001TP_006690 -> the 0001TP sequence.
  return example_id


def coverage_stratum(mask: np.ndarray) -> int:
  """TGS: 0 for an empty mask, else ceil(10 * salt fraction) in 1..10."""
  return int(np.ceil(COVERAGE_BINS * float(np.mean(mask > 0))))


def _record_id(record) -> str:
  value = record["id"]
  return value.decode() if isinstance(value, bytes) else str(value)


def assign(dataset: str, records, num_folds: int, group_regex: str = "") -> np.ndarray:
  """The fold of each record of `records` (a sequence of stored TFDS records)."""
  ids = [_record_id(records[i]) for i in range(len(records))]
  groups = [group_key(dataset, i, group_regex) for i in ids]
  if dataset == "tgs":
    strata = {g: coverage_stratum(imaging.decode_array(records[i]["mask"]))
              for i, g in enumerate(groups)}
  else:
    strata = {g: 0 for g in groups}
  if len(strata) < num_folds:
    raise ConfigError(f"num_folds={num_folds} but {dataset} has only {len(strata)} groups to "
                      f"split ({GROUP_NAMES.get(dataset, 'groups')}); "
                      "lower --config.num_folds")
  fold_of = deal_folds(strata, num_folds)
  return np.array([fold_of[g] for g in groups], np.int32)


def check(config) -> int:
  """config.num_folds (0 = the prepared split), checked against config.fold."""
  num_folds, fold = config.get("num_folds", 0), config.get("fold", 0)
  if num_folds == 0:
    if config.get("fold_holdout", False):
      raise ConfigError("fold_holdout=True keeps a test set out of the folds, but num_folds=0; "
                        "set --config.num_folds=K (>= 2) or leave fold_holdout False")
    return 0
  if num_folds < 2:
    raise ConfigError(f"num_folds={num_folds}; use 0 (the prepared train/val split) or >= 2")
  if not 0 <= fold < num_folds:
    raise ConfigError(f"fold={fold} is not in 0..{num_folds - 1}; set --config.fold to one of "
                      "them")
  if config.dataset == "synthetic":
    raise ConfigError("num_folds needs a prepared dataset; the synthetic one has no ids to "
                      "fold (set --config.num_folds=0)")
  return num_folds


class Pooled:
  """The records of several sources in one index range (each a sequence of records)."""

  def __init__(self, parts):
    self.parts = list(parts)
    self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, index: int):
    part = int(np.searchsorted(self.offsets, index, side="right")) - 1
    return self.parts[part][int(index - self.offsets[part])]


class Subset:
  """The records at `indices` of `records`."""

  def __init__(self, records, indices):
    self.records, self.indices = records, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.records[int(self.indices[index])]
