#!/usr/bin/env bash
# One batched GPU session: the gpu-marked tests, the CUDA profiler on ResNet-50's reference shapes,
# the timer cross-check, and the latency models judged on whole pruned ResNet-50s timed on the GPU.
#
#   bash benchmarks/gpu_session.sh OUTDIR [PROFILE_SECONDS]
#
# Expects latlab importable (installed, or PYTHONPATH at the checkout). Each step has its own time
# limit so one slow step cannot starve the others; a sweep cut short by its limit resumes on a rerun.
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUTDIR [PROFILE_SECONDS]}
PROFILE_SECONDS=${2:-150}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LATLAB=(python3 -m latlab)
DB="$OUT_DIR/rn50_gpu.db"
step() { echo "=== $(date -u +%T) $*"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT_DIR/nvidia_smi.csv"
"${LATLAB[@]}" hw --backend cuda | tee "$OUT_DIR/hw.txt"

step "gpu-marked tests"
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tee "$OUT_DIR/gpu_tests.log" | tail -25

step "CUDA events / graphs vs torch.profiler kernel times"
timeout 120 python3 -m benchmarks.cuda_vs_torch_profiler --repeats 30 --profiler-calls 10 \
    --out "$OUT_DIR/cuda_vs_torch_profiler.json" 2>&1 | tail -45

step "ResNet-50 reference sweep, fp16 NHWC batch 256 (cut at ${PROFILE_SECONDS}s, resumable)"
"${LATLAB[@]}" profile --model resnet50 --backend cuda --grid reference --batch 256 --dtype fp16 --layout nhwc \
    --repeats 30 --min-repeats 10 --max-rel-iqr 0.02 --time-budget "$PROFILE_SECONDS" --quiet --db "$DB" 2>&1 | tail -15
"${LATLAB[@]}" lut list --db "$DB" 2>&1 | tail -8

step "latency models on that LUT, whole pruned ResNet-50s timed on the GPU"
timeout 120 "${LATLAB[@]}" evaluate --db "$DB" --models lut,llm,mdlm,bilinear,rf,gbdt --network resnet50 \
    --pruned 16 --measure-backend cuda --out "$OUT_DIR/eval" 2>&1 | tail -40
step "done"
