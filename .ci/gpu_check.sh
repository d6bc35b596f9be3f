#!/usr/bin/env bash
# GPU check for the performance issue (#10), sized for one H200 in under 8 minutes:
#   1. the GPU-only tests (pytest -m gpu: flash attention, fused AdamW, inductor vs eager, cached targets on
#      the GPU, NVDEC frames vs decord)                                                         ~1.5 min
#   2. python -m data.bench on this machine: decord loader with 0/2/8 workers and DALI NVDEC (device='mixed',
#      a batch per pipeline run, frames land in GPU memory), on the benchmark's 8 H.264 files   ~1.5 min
#   3. ViT-L/16 16x224x224 SALT student step (frozen ViT-L teacher online, and with cached targets) in bf16:
#      clips/s, time split, peak memory, FLOPs/clip and MFU against the measured bf16 matmul rate  ~3 min
# Everything printed goes to $OUT/gpu_check.txt (the device tool returns $OUT), the bench tables also to
# $OUT/benchmarks_gpu.md; paste them into docs/benchmarks.md (## Performance) with the date.
#
# On the lent machine (python3 there has torch, timm, numpy, pytest): decord, av, hydra-core, omegaconf,
# antlr4-python3-runtime and nvidia-dali are not installed there. .ci/pack_dali.sh puts their wheels in
# .whl/ (this script installs them into /tmp/site) and DALI in two pieces, and says how to carry them over
# three calls of one warm machine; without DALI the NVDEC tests skip and the dali-gpu rows say why.
# Section 3 also writes a profiler trace of two steps per case ($OUT/trace/CASE.json.gz, CASE.txt) and prints
# their comparison, online teacher vs cached targets ($OUT/trace/summary.md, launch/trace_summary.py).
#
# usage: OUT=/tmp/out [PARTS="tests data model"] [TESTS_K=nvdec] bash .ci/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
PY=${PYTHON:-python3}
if [ -d .venv ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
PARTS=${PARTS:-tests data model}
want() { [[ " $PARTS " == *" $1 "* ]]; }
START=$(date +%s)
{
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cuda', torch.version.cuda)"
for m in decord av hydra nvidia.dali; do $PY -c "import $m" 2>/dev/null && echo "have $m" || echo "MISSING $m"; done

if want tests; then
echo; echo "== 1. GPU-only tests"
timeout 150 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" ${TESTS_K:+-k "$TESTS_K"} \
  tests/test_perf_gpu.py 2>&1 | tail -25
fi

if want data; then
echo; echo "== 2. data loader: DALI NVDEC (frames decoded into GPU memory) vs decord workers, on this machine's CPUs"
timeout 240 $PY -m data.bench --backends decord dali-gpu --workers 0 2 8 --repeats 1 --batches 24 \
  --docs "$OUT/benchmarks_gpu.md" --section "Data loader on a GPU machine (H200)" 2>&1 | grep -v '^|\|^$' | tail -30
fi

if want model; then
echo; echo "== 3. ViT-L/16 16x224x224 SALT student step, bf16"
timeout 240 $PY -m launch.bench --cases salt-large salt-large-cached --size 224 --frames 16 --batch 16 \
  --pred-width 384 --pred-depth 12 --steps 8 --warmup 3 --write --section "GPU check (H200)" \
  --docs "$OUT/benchmarks_gpu.md" --trace "$OUT/trace" 2>&1 | tail -13
echo; echo "== 3a. profiler traces side by side: device busy/idle, syncs, allocator, matmul dtypes (per step)"
if [ ! -s "$OUT/trace/summary.md" ]; then  # launch.bench writes it after its table, unless its timeout came first
  timeout 90 $PY -m launch.trace_summary "$OUT/trace/salt-large.json" "$OUT/trace/salt-large-cached.json" \
    --out "$OUT/trace/summary.md" >/dev/null
fi
cat "$OUT/trace/summary.md" 2>/dev/null || echo "no trace summary"
gzip -f "$OUT"/trace/*.json 2>/dev/null
if [ $(( $(date +%s) - START )) -lt "${COMPILE_IF_UNDER_S:-330}" ]; then  # device time is short: 0 skips it
  echo; echo "== 3b. the same with torch.compile (inductor, mask lengths bucketed to 32)"
  timeout 150 $PY -m launch.bench --cases salt-large-cached --size 224 --frames 16 --batch 16 \
    --pred-width 384 --pred-depth 12 --steps 8 --warmup 3 --compile inductor --write \
    --section "GPU check (H200), compiled" --docs "$OUT/benchmarks_gpu.md" 2>&1 | tail -8
fi
fi
echo; echo "== done in $(( $(date +%s) - START )) s"
} 2>&1 | tee "$LOG"
