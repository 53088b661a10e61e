#!/usr/bin/env bash
# One batched GPU session: the gpu-marked tests, the CUDA profiler on ResNet-50's reference shapes,
# pruned networks predicted vs measured on that LUT, the chain repeated on ResNet-18 (prediction_error),
# the timer cross-check, training-step throughput and the demo on the GPU.
#
#   bash benchmarks/gpu_session.sh OUTDIR [PACK.tgz] [STEPS]
#
# STEPS: comma-separated subset of  tests,sweep,export_speed,prediction_error,train,demo,timers
# (default: all but timers, whose H200 result is committed), run in that order. Split a session across
# calls by giving each a subset and the same OUTDIR: the export_speed step reuses (and resumes) the sweep.
# Expects latlab importable (installed, or PYTHONPATH at the checkout; scripts/device_wheels.sh fetches
# what an offline box lacks). Each step has its own time limit
# so one slow step cannot starve the others; with PACK, OUTDIR is re-packed after every step, so what
# finished survives a session cut short (keep PACK under the device tool's 16 MiB per file). A sweep cut by
# its limit resumes on a rerun. Every step's full output is in OUTDIR/*.log.
set -u
OUT_DIR=${1:?usage: gpu_session.sh OUTDIR [PACK.tgz] [STEPS]}
PACK=${2:-}
STEPS=",${3:-tests,sweep,export_speed,prediction_error,train,demo},"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
LATLAB=(python3 -m latlab)
DB="$OUT_DIR/rn50_gpu.db"
step() { echo "=== $(date -u +%T) $*"; }
wanted() { [[ "$STEPS" == *",$1,"* ]]; }
pack() { [ -n "$PACK" ] && tar czf "$PACK" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv | tee "$OUT_DIR/nvidia_smi.csv"
"${LATLAB[@]}" hw --backend cuda > "$OUT_DIR/hw.txt" 2>&1

if wanted tests; then
  step "gpu-marked tests"
  timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests > "$OUT_DIR/gpu_tests.log" 2>&1
  tail -5 "$OUT_DIR/gpu_tests.log"; pack
fi

if wanted sweep || wanted export_speed; then
  step "ResNet-50 reference sweep, fp16 NHWC batch 256 (cut at 100 s, resumable)"
  "${LATLAB[@]}" profile --model resnet50 --backend cuda --grid reference --batch 256 --dtype fp16 --layout nhwc \
      --repeats 30 --min-repeats 10 --max-rel-iqr 0.02 --time-budget 100 --quiet --db "$DB" 2>&1 | tail -3; pack
fi

if wanted export_speed; then
  step "pruned ResNet-50s: HALP/MGP/MDLM/MDP at 3 targets, predicted vs measured on the GPU"
  timeout 110 python3 -m benchmarks.export_speed --db "$DB" --sweep-name "" --backend cuda --targets 0.7,0.5,0.3 \
      --repeats 5 --rounds 10 --out "$OUT_DIR/export_speed_gpu" > "$OUT_DIR/export_speed.log" 2>&1
  tail -12 "$OUT_DIR/export_speed.log"; pack
fi

if wanted prediction_error; then
  step "ResNet-18 chain on the GPU: fresh lattice LUT, HALP / MDP one-shot, predicted vs measured"
  timeout 130 python3 -m benchmarks.prediction_error --backend cuda --batch 256 --dtype fp16 --layout nhwc \
      --repeats 1 --rounds 8 --out "$OUT_DIR/prediction_error_gpu" > "$OUT_DIR/prediction_error.log" 2>&1
  tail -12 "$OUT_DIR/prediction_error.log"; pack
fi

if wanted train; then
  step "training-step throughput vs torchvision's reference step"
  SLIM=(); [ -f "$DB" ] && SLIM=(--db "$DB" --target 0.5)  # + the slim networks, on the sweep step's LUT
  timeout 100 python3 -m benchmarks.train_throughput --device cuda --model resnet50 --batch 256 --amp --channels-last \
      "${SLIM[@]}" --out "$OUT_DIR/train_throughput_gpu" > "$OUT_DIR/train_throughput.log" 2>&1
  tail -8 "$OUT_DIR/train_throughput.log"; pack
fi

if wanted demo; then
  step "the demo on the GPU"
  timeout 150 "${LATLAB[@]}" demo --device cuda --batch 32 --out "$OUT_DIR/demo_cuda" --quiet > "$OUT_DIR/demo.log" 2>&1
  tail -3 "$OUT_DIR/demo.log"
  rm -rf "$OUT_DIR/demo_cuda/runs" "$OUT_DIR/demo_cuda/digits"  # checkpoints and images: too big to bring back
  pack
fi

if wanted timers; then
  step "CUDA events (with / without queue backlog) and graphs vs torch.profiler kernel times"
  timeout 70 python3 -m benchmarks.cuda_vs_torch_profiler --repeats 30 --profiler-calls 10 \
      --out "$OUT_DIR/cuda_vs_torch_profiler.json" > "$OUT_DIR/cuda_vs_torch_profiler.log" 2>&1
  tail -3 "$OUT_DIR/cuda_vs_torch_profiler.log"; pack
fi
step "done"
