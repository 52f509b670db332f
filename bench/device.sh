#!/usr/bin/env bash
# Run THERE, on the lent GPU machine, from the repository root, with .whl carried (bench/device_wheels.sh made it):
#   bash bench/device.sh [quick|full]
# Installs the carried wheels and anybind (no network, no build isolation) into /tmp/site, runs the torch GPU
# tests (tests/test_store_gpu.py needs faiss-gpu, which does not fit),
# then the GPU section of the benchmark, and leaves docs/benchmarks.md, results.json, the plots and the logs in
# $OUT. `quick` uses the quick sizes; the full GPU section has never run, so start with quick.
set -uo pipefail
mode="${1:-quick}"
repo="$(pwd)"
out="${OUT:-/tmp/out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . || exit 1
cd /tmp || exit 1   # so that the checkout's core/ does not shadow the installed anybind
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import anybind, faiss, torch; print('anybind', anybind.__version__, 'faiss', faiss.__version__, \
'torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider --rootdir "$repo" -c "$repo/pyproject.toml" \
    "$repo/tests/test_torch_scan.py" 2>&1 | tail -30 | tee "$out/gpu_tests.txt"
flag=""; [ "$mode" = quick ] && flag="--quick"
timeout 400 python3 "$repo/bench/run.py" --only gpu $flag --workdir /tmp/anybind-bench 2>&1 | tee "$out/bench.log" | tail -40
cp "$repo/docs/benchmarks.md" "$repo/docs/benchmarks/results.json" "$out/" 2>/dev/null
cp "$repo"/docs/benchmarks/gpu*.png "$out/" 2>/dev/null
ls -la "$out"
