#!/usr/bin/env bash
# The compile, op-count and Pattention kernel tests under another torch, in a venv of its own: run it
# for the GPU machines' torch (2.11) before every GPU run, so that no GPU minute goes on an error that
# the CPU could show (dynamo in 2.11 traces less than in requirements.txt's torch).
#   bash benchmarks/check_torch.sh 2.11.0 3.6.0 'numpy<2.4'   # torch, optionally its Triton, and any further pins
# (Triton 3.6's CPU interpreter, which the kernel tests use without a GPU, fails on numpy 2.4's scalars)
# The venv lives in .cache/venv-torch-VERSION (about 2 minutes and 5 GB the first time: a CUDA build);
# the rest of requirements.txt is installed beside that torch. The log, with the versions it ran under,
# goes to benchmarks/results/check_torch_VERSION.log (OUT=folder to put it elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: bash benchmarks/check_torch.sh TORCH_VERSION [TRITON_VERSION [REQUIREMENT...]]}
triton=${2:-}
shift $(( $# < 2 ? $# : 2 ))
venv=.cache/venv-torch-$version
out=${OUT:-benchmarks/results}
log=$out/check_torch_$version.log
mkdir -p "$out"
if [ ! -x "$venv/bin/python" ]; then
  python -m venv "$venv"
fi
# torchvision is left to pip, which pairs it with this torch; everything else as requirements.txt pins it
"$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$version" ${triton:+"triton==$triton"} \
  $(grep -v -E '^\s*(#|$)|^(torch|torchvision)==' requirements.txt) "$@"
{
  echo "# bash benchmarks/check_torch.sh $version $triton $*   ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD)$(git diff --quiet -- . ':!benchmarks/results' || echo ' with local changes'))"
  "$venv/bin/python" -c 'import numpy, torch, timm, triton; print("torch", torch.__version__, "triton", triton.__version__, "timm", timm.__version__, "numpy", numpy.__version__)'
  echo "## aten ops of one block, forward and backward (benchmarks/count_ops.py)"
  PYTHONPATH=$PWD "$venv/bin/python" benchmarks/count_ops.py
  echo "## the tests"
  PYTHONPATH=$PWD "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_compile.py tests/test_pattention.py \
    tests/test_triton_pattention.py tests/test_tokenformer_vit.py 2>&1 | grep -v -E 'Warning|warnings.warn'
} 2>&1 | tee "$log"
