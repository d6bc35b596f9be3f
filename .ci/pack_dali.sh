#!/usr/bin/env bash
# Pack this checkout's nvidia-dali (cuda130) for the lent GPU machine, which has no DALI and no network.
# The wheel unpacks to ~480 MB; trimmed to the Python 3.12 bindings the machine's python3 needs and without
# the C++ headers it is 126 MiB as xz, which travels as two pieces of < 63 MiB (the device tool carries
# 64 MiB per call, working tree included) in two calls to one warm machine. Also fetches the wheels the
# GPU check needs there (decord2, av, hydra-core, omegaconf, antlr4 and DALI's pure-Python needs) into .whl/.
#
# Then, on the device tool (machine idle for at most 30 s between calls):
#   run 1, carry [".whl"]:   OUT=$OUT PARTS="tests model" bash .ci/gpu_check.sh   (installs .whl into /tmp/site)
#   run 2, carry [".dali_a"]: mkdir -p /tmp/stash && mv .dali_a/* /tmp/stash/
#   run 3, carry [".dali_b"]: cat /tmp/stash/* .dali_b/* | xz -d | tar -x -C /tmp/site;
#     echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" > /tmp/site/nvidia/__init__.py;
#     PYTHONPATH=/tmp/site OUT=$OUT PARTS="tests data" TESTS_K=nvdec bash .ci/gpu_check.sh
# (the __init__ lets /tmp/site/nvidia/dali and the machine's own nvidia/* CUDA packages share the name).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SITE=$($PY -c "import nvidia.dali, pathlib; print(pathlib.Path(nvidia.dali.__file__).parents[2])")
DIST=$(cd "$SITE" && ls -d nvidia_dali_cuda*.dist-info | head -1)
for d in .dali_a .dali_b .whl; do grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
mkdir -p .dali_a .dali_b .whl
tmp=$(mktemp -d)
tar -C "$SITE" -cf - --exclude='*cpython-31[013-9]*' --exclude='*cpython-31?t*' --exclude='__pycache__' \
  --exclude='nvidia/dali/include' --exclude='nvidia/dali/test' nvidia/dali "$DIST" | xz -9e -T0 > "$tmp/dali.tar.xz"
split -n 2 -d "$tmp/dali.tar.xz" "$tmp/piece_"
rm -f .dali_a/* .dali_b/*
mv "$tmp/piece_00" .dali_a/ && mv "$tmp/piece_01" .dali_b/
rm -rf "$tmp"
rm -f .whl/*.whl  # one version of each: two stop the install there
py312=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
       --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for pkg in decord2 av hydra-core omegaconf astunparse gast optree makefun; do
  v=$($PY -m pip show "$pkg" 2>/dev/null | awk '/^Version/{print $2}')
  $PY -m pip download -q "${py312[@]}" -d .whl "$pkg${v:+==$v}"
done
$PY -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # sdist only on PyPI
ls -la .dali_a .dali_b .whl
