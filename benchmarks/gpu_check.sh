#!/usr/bin/env bash
# The training job's GPU check (issue 5), one short script: a few hundred bf16 steps of
# tokenformer_vit_base_pm through the real pipeline (generated full-size JPEG shards, workers,
# the recipe's transforms, DDP-ready loop, checkpoints), grown mid-run to tokenformer_vit_base's token counts,
# next to vit_base_patch16_224 trained the same way. Figures go to $OUT (or benchmarks/results/).
#   bash benchmarks/gpu_check.sh            # STEPS=300 BATCH=128 IMAGES=6400 by default
# On a machine without the package registries, put the wheels of requirements.txt's packages that
# it lacks (pip download -d .whl ...) in .whl/: they are installed from there first.
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_check_info.txt"
python3 benchmarks/gpu_check.py --steps "${STEPS:-300}" --batch-size "${BATCH:-128}" --images "${IMAGES:-6400}" \
  --json "$out/gpu_check.json" 2>&1 | grep -v Warning | tee "$out/gpu_check.txt"
