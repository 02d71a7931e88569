#!/usr/bin/env bash
# The issue-2 GPU check, one short script: CUDA correctness of Pattention, then the layer and model
# benchmarks in bf16 (eager and compiled). Figures go to $OUT (or benchmarks/results/ when unset).
#   bash benchmarks/gpu_bench_model.sh
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if [ -d .whl ]; then  # wheels carried to a machine without the registries
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_info.txt"
python3 -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)' | tee -a "$out/gpu_info.txt"
python3 -m pytest tests/test_pattention.py -q -x -p no:cacheprovider 2>&1 | tail -3 | tee "$out/gpu_tests.txt"
{
  python3 benchmarks/bench_pattention.py --device cuda --batch 64 --iters 50
  python3 benchmarks/bench_pattention.py --device cuda --batch 64 --iters 50 --amp
} 2>&1 | tee "$out/bench_pattention_cuda.txt"
python3 benchmarks/bench_model.py --device cuda --pairs base_pm --compile --iters 20 \
  --json "$out/bench_model_cuda_base_pm.json" 2>&1 | grep -v Warning | tee "$out/bench_model_cuda.txt"
python3 benchmarks/bench_model.py --device cuda --pairs tiny small base large_pm --iters 20 \
  --json "$out/bench_model_cuda_sizes.json" 2>&1 | grep -v Warning | tee -a "$out/bench_model_cuda.txt"
