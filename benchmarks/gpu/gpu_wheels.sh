#!/usr/bin/env bash
# Prepares what benchmarks/gpu/gpu_check.sh needs on a GPU machine that has no network:
#   .whl/            the project's dependencies that machine lacks, as Python 3.12 manylinux
#                    x86_64 wheels (pip install --no-index --no-deps there);
#   .whl/fallback/   protobuf, installed there only when its own is older than the
#                    tensorflow-metadata protos need;
#   .gpu_data/tgs/   a copy of the TGS sample (../shared/data/tgs does not travel).
# Both folders are git-ignored; name them in the device call's `carry`. Then checks that they
# and the tracked files stay under the 64 MiB a device call may carry.
#
#   bash benchmarks/gpu/gpu_wheels.sh            # from the repository root, where pip reaches PyPI
#
# The list: the dependency closure of pyproject.toml's dependencies, minus what the GPU image
# already holds (jax, jaxlib, flax, optax, orbax-checkpoint, numpy, scipy, absl-py, etils,
# protobuf, pyarrow, psutil, requests, wrapt, pyyaml, attrs, cloudpickle, opencv, pillow,
# matplotlib, tensorboard, tqdm, torch ...). Versions are the ones the CPU suite runs with.
# promise ships only as a source archive: it is built here into a pure-Python wheel.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-python3}"
WHEELS=(
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
  tensorflow-datasets==4.9.10 dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9
  docstring-parser==0.18.0 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  termcolor==3.3.0 toml==0.10.2
  ml-collections==1.1.0
)
SOURCE_ONLY=(promise==2.3)
FALLBACK=(protobuf==6.33.5)  # The oldest tensorflow-metadata 1.21's protos and googleapis accept.
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
LIMIT_MIB=64
SHARED="${UNET_JAX_SHARED_DATA:-../shared/data}"

rm -rf .whl && mkdir -p .whl/fallback
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
"$PYTHON" -m pip wheel -q --no-deps --no-binary=:all: -w .whl "${SOURCE_ONLY[@]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d .whl/fallback \
  "${FALLBACK[@]}"
count=$(ls .whl/*.whl | wc -l)
expected=$(( ${#WHEELS[@]} + ${#SOURCE_ONLY[@]} ))
if [ "$count" -ne "$expected" ]; then
  echo "error: .whl/ holds $count wheels, expected $expected (one per package); rerun" >&2
  exit 1
fi

rm -rf .gpu_data/tgs
if [ -d "$SHARED/tgs/train/images" ]; then
  mkdir -p .gpu_data && cp -r "$SHARED/tgs" .gpu_data/tgs
else
  echo "note: no TGS sample at $SHARED/tgs (set UNET_JAX_SHARED_DATA); gpu_check skips tgs"
fi

# What a device call sends: tracked and untracked-not-ignored files, plus the carried folders.
tree_bytes=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } \
  | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
carried_bytes=$(du -sb .whl $( [ -d .gpu_data ] && echo .gpu_data) | awk '{s += $1} END {print s}')
total=$(( tree_bytes + carried_bytes ))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "tree $(mib "$tree_bytes") + .whl/.gpu_data $(mib "$carried_bytes") = $(mib "$total")" \
     "(limit $LIMIT_MIB MiB)"
du -sh .whl $( [ -d .gpu_data ] && echo .gpu_data) | sed 's/^/  /'
if [ "$total" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "error: over the device call's $LIMIT_MIB MiB; carry a smaller TGS subset" >&2
  exit 1
fi
