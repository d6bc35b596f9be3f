#!/usr/bin/env bash
# GPU check for the performance issue (#10), sized for one H200 in under 8 minutes:
#   1. the GPU-only tests (pytest -m gpu: flash attention, fused AdamW, inductor vs eager, cached targets on
#      the GPU, NVDEC frames vs decord)                                                         ~1.5 min
#   2. decode throughput: DALI NVDEC (device='mixed', frames land in GPU memory) vs decord on 16 CPU worker
#      processes, on the data benchmark's 8 H.264 files (data/bench.py's functions)             ~1.5 min
#   3. ViT-L/16 16x224x224 SALT student step (frozen ViT-L teacher online, and with cached targets) in bf16:
#      clips/s, time split, peak memory, FLOPs/clip and MFU against the measured bf16 matmul rate  ~3 min
# Everything printed goes to $OUT/gpu_check.txt (the device tool returns $OUT), the bench tables also to
# $OUT/benchmarks_gpu.md; paste them into docs/benchmarks.md (## Performance) with the date.
#
# On the lent machine (python3 there has torch, timm, numpy, pytest): decord, av, hydra-core, omegaconf
# and antlr4-python3-runtime are not installed there; carry them as wheels in .whl/ (see
# /work/.library/device/README.md) and this script installs them into /tmp/site. The nvidia-dali wheel is
# larger than the 64 MiB the tool carries, so without DALI installed there the NVDEC rows say "skipped".
#
# usage: OUT=/tmp/out bash scripts/gpu_check.sh
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
START=$(date +%s)
{
echo "== gpu_check $(date -u +%Y-%m-%dT%H:%MZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cuda', torch.version.cuda)"
for m in decord av hydra nvidia.dali; do $PY -c "import $m" 2>/dev/null && echo "have $m" || echo "MISSING $m"; done

echo; echo "== 1. GPU-only tests"
timeout 150 $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="" tests/test_perf_gpu.py 2>&1 | tail -25

echo; echo "== 2. decode: DALI NVDEC vs decord (16 CPU workers)"
timeout 150 $PY - <<'PYEOF'
import tempfile, time
from pathlib import Path
import torch
try:
    from data import bench as db
    from data.benchvideos import make_bench_videos
except Exception as e:  # decord/av missing
    raise SystemExit(f"decode check skipped: {type(e).__name__}: {e}")
tmp = tempfile.mkdtemp(prefix="gpucheck_videos_")
items = db._items(make_bench_videos(tmp))
keys = db.loader_keys(items, 128)
rate, cpu = db.bare_clips_per_s(items, "decord", keys, 16)
print(f"decord bare, 16 processes: {rate:.1f} clips/s (16 frames, step 4; {cpu:.0f} CPU ms/clip)")
rate, _ = db.loader_clips_per_s(items, "decord", 16, 16, normalize=True, device="cuda")
print(f"decord loader, 16 workers (decode + RandomResizedCrop 224 + flip; pinned copy, normalise on the GPU; batch 8): {rate:.1f} clips/s")
try:
    from data.decoders import open_video
    readers = {}
    def nvdec(keys):
        for index, idx in keys:
            p = items[index].path
            if p not in readers:
                readers[p] = open_video(p, "dali", device="mixed")
            frames = readers[p].get_frames(idx)
        torch.cuda.synchronize()
        return frames
    frames = nvdec(keys[:8])  # warm-up: decoders open
    assert frames.is_cuda, "NVDEC frames are not on the GPU"
    t0 = time.perf_counter(); nvdec(keys); dt = time.perf_counter() - t0
    print(f"DALI NVDEC bare, 1 clip per pipeline run (frames in GPU memory, uint8 {tuple(frames.shape)}): {len(keys) / dt:.1f} clips/s")
    gpu = dict(device="cuda", decoder_options={"device": "mixed", "device_id": 0})
    rate, _ = db.loader_clips_per_s(items, "dali", 0, 16, normalize=True, **gpu)
    print(f"DALI NVDEC loader (a batch of 8 per pipeline run; crop, flip, normalise on the GPU): {rate:.1f} clips/s")
except Exception as e:
    print(f"DALI NVDEC skipped: {type(e).__name__}: {str(e)[:200]}")
PYEOF

echo; echo "== 3. ViT-L/16 16x224x224 SALT student step, bf16"
timeout 240 $PY -m launch.bench --cases salt-large salt-large-cached --size 224 --frames 16 --batch 16 \
  --pred-width 384 --pred-depth 12 --steps 8 --warmup 3 --write --section "GPU check (H200)" \
  --docs "$OUT/benchmarks_gpu.md" 2>&1 | tail -12
if [ $(( $(date +%s) - START )) -lt 330 ]; then
  echo; echo "== 3b. the same with torch.compile (inductor, mask lengths bucketed to 32)"
  timeout 150 $PY -m launch.bench --cases salt-large-cached --size 224 --frames 16 --batch 16 \
    --pred-width 384 --pred-depth 12 --steps 8 --warmup 3 --compile inductor --write \
    --section "GPU check (H200), compiled" --docs "$OUT/benchmarks_gpu.md" 2>&1 | tail -8
fi
echo; echo "== done in $(( $(date +%s) - START )) s"
} 2>&1 | tee "$LOG"
