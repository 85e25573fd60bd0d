#!/usr/bin/env bash
# The GPU check in one script (~8 minutes on an H100): CUDA tests (engine and stabiliser), then
# `streamer bench` for vit-small, vit-large and vit-giant2 at 616x1064 fp16 with a 1920x1080
# source (each also reports the stabiliser's cost per 1080p frame), each switch's effect, the
# engine's own ceiling (--processor null) per output format, GPU utilisation while it runs, and
# the runtimes: TensorRT fp16 (vit-small, vit-large, giant2) and ONNX Runtime's CUDA provider.
#
# usage (repository root, on the GPU machine):  benchmarks/gpu.sh OUTDIR
# A bare image (Python 3.12 + CUDA torch) lacks PyAV, pydantic, pyvirtualcam, controlnet_aux:
# run ../shared/gpu/fetch_wheels.sh here first and carry .whl/ along; this script installs them.
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu.sh OUTDIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if [ -d .whl ] && ! python3 -c "import av, pydantic, pyvirtualcam, controlnet_aux" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl
fi
export PYTHONPATH="$PWD:$PWD/.site${PYTHONPATH:+:$PYTHONPATH}"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/log.txt"; }

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -m streamer doctor > "$OUT/doctor.txt" 2>&1
# GPU busy: sampled every 100 ms for the whole run (compare with each bench's wall time)
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 100 \
  > "$OUT/gpu-util.csv" 2>/dev/null &
SAMPLER=$!
trap 'kill $SAMPLER 2>/dev/null' EXIT

log "pytest -m gpu"
timeout 480 python3 -m pytest -m gpu tests/test_cuda.py tests/test_stabilize.py tests/test_runtimes.py -q -p no:cacheprovider > "$OUT/pytest-gpu.txt" 2>&1
log "pytest rc=$?"

bench() {  # name, then bench flags (the torch rows; later flags win, so a row can pick another runtime)
  local name=$1; shift
  log "bench $name: $*"
  timeout "${BENCH_TIMEOUT:-240}" python3 -m streamer bench --device cuda --runtime torch --precision fp16 --input-size 616x1064 \
    --source-size 1920x1080 --live-fps 30 --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1
  log "bench $name rc=$?"
}
bench small --frames 300 --memory-factor 3 --batch-size 4
bench small-batch1-eager-switches-off --frames 200 --memory-factor 1 --no-pinned --no-stream --no-batching
bench small-compile --frames 200 --memory-factor 1 --batch-size 4 --compile
bench large --frames 150 --memory-factor 1 --backbone vit-large --batch-size 2
bench null-engine --frames 300 --memory-factor 1 --processor null --formats color,gray,side-by-side,metric16
bench giant2 --frames 60 --memory-factor 1 --backbone vit-giant2 --batch-size 1
# runtimes (needs `pip install 'streamer[tensorrt]'`: onnxruntime-gpu + tensorrt): the first run of
# each exports the ONNX graph and builds the TensorRT engine (minutes), later runs load them
BENCH_TIMEOUT=600 bench small-tensorrt-fp16 --frames 300 --memory-factor 1 --batch-size 4 --runtime tensorrt
BENCH_TIMEOUT=600 bench small-ort-cuda-fp32 --frames 200 --memory-factor 1 --batch-size 4 --runtime onnxruntime --precision fp32
BENCH_TIMEOUT=900 bench large-tensorrt-fp16 --frames 150 --memory-factor 1 --backbone vit-large --batch-size 2 --runtime tensorrt
BENCH_TIMEOUT=1200 bench giant2-tensorrt-fp16 --frames 60 --memory-factor 1 --backbone vit-giant2 --runtime tensorrt
log "done"
