#!/usr/bin/env bash
# On the GPU machine, from the repository root: installs the wheels benchmarks/gpu/gpu_wheels.sh
# put in .whl/ (that machine has no network), then runs benchmarks/gpu/gpu_check.py with the TGS
# copy in .gpu_data/tgs; its log goes to $OUT/gpu_check.log beside its reports.
#
#   OUT=/some/dir bash benchmarks/gpu/gpu_check.sh [gpu_check.py options, e.g. --only ...]
#
# Device tool: command `bash benchmarks/gpu/gpu_check.sh`, carry [".whl", ".gpu_data"].
set -uo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder for the reports}"
PYTHON="${PYTHON:-python3}"
SITE="${SITE:-/tmp/site}"

pip_install() {
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$@"
}
pip_install .whl/*.whl || { echo "error: installing .whl/ failed; rerun gpu_wheels.sh" >&2; exit 1; }
# tensorflow-metadata's protos need protobuf >= 6.31; carried in case the machine's is older.
if ! "$PYTHON" -c 'import sys, google.protobuf as p
sys.exit(tuple(int(x) for x in p.__version__.split(".")[:2]) < (6, 31))' 2>/dev/null; then
  echo "protobuf older than 6.31 here: installing .whl/fallback/"
  pip_install .whl/fallback/*.whl || exit 1
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PYTHON" -c 'import unet_jax.train, grain, tensorflow_datasets, ml_collections' \
  || { echo "error: the project does not import with the carried wheels" >&2; exit 1; }

tgs=()
[ -d .gpu_data/tgs ] && tgs=(--tgs_dir .gpu_data/tgs)
mkdir -p "$OUT"
"$PYTHON" benchmarks/gpu/gpu_check.py --out "$OUT" "${tgs[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
