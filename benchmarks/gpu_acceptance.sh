#!/usr/bin/env bash
# The fused Pattention kernels on one GPU (H100 or H200), in one call of at most 9.5 minutes:
#   info      the GPU, torch, Triton
#   layer     Pattention bf16 fwd and fwd+bwd at batch 64 and 256: bare matmuls, the torch path, the fused
#             path, with each call's host time (a host-bound call's ratio falls as the batch grows)
#   eager     bench_model eager: tiny, small, base_pm against timm's ViTs, torch and fused paths
#   job       the training job end to end on generated JPEG shards: bf16, fused, grown mid-run
#   compiled  bench_model torch.compile (per block): tiny, small, base_pm, fused path
#   tests     the Pattention tests on CUDA (bf16 included; inductor compiles the custom op)
#   large     large_pm against ViT-L, eager, torch and fused paths, train batch 32 (fits an H100's memory);
#             not run unless STAGES names it (measured in h200_issue14_run2_large.json)
# Stages run in that order, each under its own time limit (560 s in all by default), and a failed stage does not
# stop the rest; a benchmark cut short keeps the pairs it finished. Everything goes to $OUT (or benchmarks/results/): PREFIX.log (all output, stage times and
# exit codes) and one PREFIX_STAGE.json per benchmark, 6 files by default. Choose stages with STAGES="...".
#   bash benchmarks/gpu_acceptance.sh
#   STAGES="layer tests" PREFIX=h100_try bash benchmarks/gpu_acceptance.sh
# On the device machine, carry the wheels the machine lacks (albumentations, webdataset, submitit)
# in .whl/ (see ../shared/device-wheels/README.md), and timm 1.0.31 where the machine's timm is older
# (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl timm==1.0.31):
# they are installed from there first.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
prefix=${PREFIX:-gpu_acceptance}
stages=${STAGES:-info layer eager job compiled tests}
mkdir -p "$out"
log="$out/$prefix.log"
: > "$log"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$PWD/.site" .whl/*.whl \
    2>&1 | tail -3 | tee -a "$log"
  export PYTHONPATH="$PWD/.site:$PWD"
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
if ! python3 -c 'import tokenformer_vit' >> "$log" 2>&1; then
  echo "tokenformer_vit does not import here (see $log): carry the missing wheels in .whl/, timm 1.0.31 included." | tee -a "$log"
  exit 2
fi
t_start=$(date +%s)

stage() {  # stage NAME SECONDS COMMAND...: run it if chosen, log its output, time and exit code
  local name=$1 limit=$2
  shift 2
  case " $stages " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name (limit ${limit}s) ===" | tee -a "$log"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" 2>&1 | grep --line-buffered -v -E 'Warning|warnings.warn' | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $(( $(date +%s) - t0 ))s (total $(( $(date +%s) - t_start ))s) ===" | tee -a "$log"
}

stage info 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv;
  python3 -c "import torch, triton, timm; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"timm\", timm.__version__)"'
stage layer 80 bash -c "python3 benchmarks/bench_pattention.py --device cuda --batch 64 --amp --iters 50 \
  --tokens 768 3072 --json $out/${prefix}_layer.json && python3 benchmarks/bench_pattention.py --device cuda \
  --batch 256 --amp --iters 30 --tokens 768 3072 --json $out/${prefix}_layer256.json"
stage eager 100 python3 benchmarks/bench_model.py --device cuda --pairs tiny small base_pm --impls torch fused \
  --iters 12 --warmup 3 --json "$out/${prefix}_eager.json"
stage job 100 python3 benchmarks/gpu_check.py --pattention-impl fused --no-baseline --steps 120 --batch-size 128 \
  --images 3200 --val-images 512 --json "$out/${prefix}_job.json"
stage compiled 110 env TORCH_LOGS=graph_breaks,recompiles python3 benchmarks/bench_model.py --device cuda --pairs base_pm tiny small --impls fused \
  --compile --only-compiled --compile-mode regional --iters 12 --warmup 3 --json "$out/${prefix}_compiled.json"
stage tests 150 python3 -m pytest -q -p no:cacheprovider --durations=10 tests/test_triton_pattention.py tests/test_pattention.py
stage large 40 python3 benchmarks/bench_model.py --device cuda --pairs large_pm --impls torch fused \
  --batch 128 --train-batch 32 --iters 8 --warmup 2 --json "$out/${prefix}_large.json"
echo "=== done after $(( $(date +%s) - t_start ))s ===" | tee -a "$log"
