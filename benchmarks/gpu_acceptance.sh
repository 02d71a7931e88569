#!/usr/bin/env bash
# Where a training step's time goes on one GPU (H100 or H200), and how far each size is from timm's ViT,
# in one call of at most 9 minutes, the most informative stage first (docs/gpu.md says what each
# figure is and which done-when bar it reads):
#   info        the GPU, torch, Triton, timm
#   check       does it compile here: one graph per model, each size once per phase through 4 growths
#               (tests/test_compile.py), and the aten ops of one block (benchmarks/count_ops.py)
#   profile     torch.profiler over training steps of tiny and base_pm, ours and timm's ViT, eager and
#               compiled: wall, host-issue and device ms per step, kernels per step, top 15 kernels;
#               then base_pm on the fused Triton path, eager
#   bench       bench_model's images/s ratios for tiny, small, base_pm: eager (one process), then
#               compiled per block, each pair in its own process
#   layer       one Pattention, torch and fused paths, against the bare matmuls, with each call's host time
#   job         the training job with --compile on JPEG shards, grown mid-run: the 100 ImageNet photographs
#               of $PHOTOS (default data/imagenet-sample-100, a copy of ../shared/data/imagenet-sample-100
#               carried beside the wheels), repeated, or generated images where it is absent; beside each
#               run the model's train steps alone and the loader alone (benchmarks/gpu_check.py)
#   passes      passes over the (m x n) scores in inductor's code for one Pattention: default,
#               max-autotune-no-cudagraphs (prologue and epilogue fusion into its GEMM templates)
#   autotune    bench_model base_pm compiled with max-autotune-no-cudagraphs
#   cudagraphs  bench_model tiny and small compiled with reduce-overhead (a CUDA graph per block)
# and, only when STAGES names them: growth (bench_compile_growth.py on the GPU), tests (the CUDA tests).
# Each stage runs under its own time limit and a failed stage does not stop the rest. Everything goes
# to $OUT (or benchmarks/results/), at most 8 files: PREFIX.log (all output, stage times and exit codes),
# PREFIX_profile.{json,md}, PREFIX_eager.json, PREFIX_compiled.json (every compiled bench row, each with
# its inductor mode), PREFIX_layer.json, PREFIX_job.json, PREFIX_passes.json.
#   bash benchmarks/check_torch.sh 2.11.0 3.6.0     # first, on the CPU: the GPU machines' torch
#   bash benchmarks/gpu_acceptance.sh
#   STAGES="profile bench" PREFIX=h200_run2 bash benchmarks/gpu_acceptance.sh
#   DRY=1 bash benchmarks/gpu_acceptance.sh          # on the CPU: every stage at toy sizes, to catch script errors
# On the device machine, carry the wheels the machine lacks (webdataset, submitit and timm 1.0.31; the
# albumentations wheels there are no longer needed) in .whl/ (../shared/device-wheels/README.md): they
# are installed from there first.
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
prefix=${PREFIX:-gpu_acceptance}
stages=${STAGES:-info check profile bench layer job passes autotune cudagraphs}
dry=${DRY:-0}
mkdir -p "$out"
log="$out/$prefix.log"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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

# the sizes of each stage: the real ones, or toys on the CPU (DRY=1); plain strings, split where used
if [ "$dry" = 1 ]; then
  export TRITON_INTERPRET=1 DEV="--device cpu" BENCH="--batch 2 --train-batch 2 --iters 1 --warmup 1" PAIRS="tiny" CG_PAIRS="tiny"
  prof="--pairs tiny --img-size 32 --batch 2 --warmup 1 --steps 2"
  prof_fused="--pairs tiny --img-size 32 --batch 2 --warmup 1 --steps 1"
  layer="--batch 1 --iters 2 --tokens 64 --impls torch"
  job="--device cpu --amp none --steps 8 --batch-size 8 --images 64 --val-images 16 --workers 1 --model-kwargs depth=2 img_size=32"
  passes="--batch 2"
  modes="default"
else
  export DEV="--device cuda" BENCH="--iters 12 --warmup 3" PAIRS="tiny small base_pm" CG_PAIRS="tiny small"
  prof="--pairs tiny base_pm"
  prof_fused="--pairs base_pm"
  layer="--batch 64 --amp --iters 40 --tokens 768 3072 --impls torch triton"
  job="--steps 120 --batch-size 128 --images 3200 --val-images 512 --model-kwargs depth=6"
  passes=""
  modes="default max-autotune-no-cudagraphs"
fi
photos=${PHOTOS:-data/imagenet-sample-100}
[ -d "$photos" ] && job="$job --photos $photos"
export OUT_DIR=$out PREFIX_=$prefix TMP=$tmp
# every compile shows its graph breaks and recompilations in the log (a recompile-limit line would too)
export TORCH_LOGS=graph_breaks,recompiles

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

compiled_pairs() {  # compiled_pairs INDUCTOR_MODE PAIR...: bench_model compiled per block, one process per pair,
  local mode=$1 pair  # every row merged into OUT/PREFIX_compiled.json as it comes
  shift
  for pair in "$@"; do
    python3 benchmarks/bench_model.py $DEV $BENCH --pairs "$pair" --compile --only-compiled --compile-mode regional \
      --inductor-mode "$mode" --json "$TMP/compiled_${mode}_$pair.json" || echo "$pair ($mode): exit $?"
    python3 -c 'import json, sys
runs = [json.load(open(p)) for p in sys.argv[2:]]
json.dump(dict(runs[0], rows=[r for run in runs for r in run["rows"]]), open(sys.argv[1], "w"), indent=1)' \
      "$OUT_DIR/${PREFIX_}_compiled.json" "$TMP"/compiled_*.json
  done
}
export -f compiled_pairs

stage info 15 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null;
  python3 -c "import torch, triton, timm; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"timm\", timm.__version__)"'
stage check 50 bash -c 'python3 -m pytest -q -x -p no:cacheprovider tests/test_compile.py && python3 benchmarks/count_ops.py'
stage profile 120 bash -c "python3 benchmarks/profile_step.py \$DEV $prof --modes eager compiled \
  --json $out/${prefix}_profile.json --markdown $out/${prefix}_profile.md &&
  python3 benchmarks/profile_step.py \$DEV $prof_fused --modes eager --impls triton --no-vit --append \
  --json $out/${prefix}_profile.json --markdown $out/${prefix}_profile.md"
stage bench 120 bash -c 'python3 benchmarks/bench_model.py $DEV $BENCH --pairs $PAIRS --json "$OUT_DIR/${PREFIX_}_eager.json";
  compiled_pairs default $PAIRS'
stage layer 30 python3 benchmarks/bench_pattention.py $DEV $layer --json "$out/${prefix}_layer.json"
stage job 100 python3 benchmarks/gpu_check.py $job --compile --pattention-impl torch --no-baseline \
  --models tokenformer_vit_tiny vit_tiny_patch16_224 --json "$out/${prefix}_job.json"
stage passes 45 bash -c "for mode in $modes; do python3 benchmarks/count_passes.py \$DEV $passes --mode \$mode \
  --json \$TMP/passes_\$mode.json; done; python3 -c 'import json, sys
json.dump([json.load(open(p)) for p in sys.argv[2:]], open(sys.argv[1], \"w\"), indent=1)' \
  \$OUT_DIR/\${PREFIX_}_passes.json \$TMP/passes_*.json"
stage autotune 45 bash -c "compiled_pairs ${modes##* } ${PAIRS##* }"
stage cudagraphs 40 bash -c 'compiled_pairs reduce-overhead $CG_PAIRS'
stage growth 120 python3 benchmarks/bench_compile_growth.py $DEV --strategies reset dynamic
stage tests 150 python3 -m pytest -q -p no:cacheprovider --durations=10 tests/test_triton_pattention.py tests/test_pattention.py
echo "=== done after $(( $(date +%s) - t_start ))s ===" | tee -a "$log"
