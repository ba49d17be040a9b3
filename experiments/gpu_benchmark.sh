#!/usr/bin/env bash
# ResNet-50 training-step benchmark on one GPU: bfloat16, batch 256 at 224x224, SGD + momentum +
# weight decay, synthetic data. Prints and writes (under $OUT, default /tmp/cnnjax_gpu_benchmark):
#   resnet50.json         cold compile, in-memory loader vs model, a jax.profiler summary of 3 steps
#   resnet50_trace.json.gz  that trace (Perfetto / chrome://tracing)
#   resnet50_cached.json  a second launch that loads the step from the compilation cache
#   resnet50_vs_torch.json  cnnjax vs torchvision eager and torch.compile, one process, alternating
#   loaders.json          ImageNet-shaped JPEGs: every loader per core and with workers, and the
#                         step fed end to end by the streaming and DALI loaders vs synthetic
#   variants.jsonl        the same step under other XLA flags and batch sizes
#   log.txt               everything printed
# Usage: bash experiments/gpu_benchmark.sh [python]   (BENCH_VARIANTS=0 skips the variants;
# BENCH_JPEG_ARGS changes the JPEG step, e.g. fewer images; BENCH_JPEG=0 skips it)
# The reference points it is set against, and what it printed:
# docs/performance.md#gpu-resnet-50-bfloat16-batch-256-at-224x224.
set -u
PY=${1:-python3}
OUT=${OUT:-/tmp/cnnjax_gpu_benchmark}
mkdir -p "$OUT"
CACHE=$(mktemp -d)
PROF=$(mktemp -d)
export PYTHONUNBUFFERED=1
# BENCH_ARGS / BENCH_BATCH change the model and batch (e.g. a small CNN to try the script on CPU).
read -ra ARGS <<< "${BENCH_ARGS:---model=resnet50 --image_size=224 --num_classes=1000 --dtype=bfloat16}"
B=${BENCH_BATCH:-256}
exec > >(tee -a "$OUT/log.txt") 2>&1

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit,driver_version \
  --format=csv 2>/dev/null || echo "nvidia-smi: not available"
"$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())"
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__)" || true

echo "== 1. cold compile (empty compilation cache), in-memory loader, profile of 3 steps"
timeout 240 "$PY" -m experiments.benchmarks.benchmark "${ARGS[@]}" --batch_size=$B --rounds=3 --steps=20 \
  --compilation_cache_dir="$CACHE" --profile_dir="$PROF" --json="$OUT/resnet50.json"
find "$PROF" -name perfetto_trace.json.gz -exec cp {} "$OUT/resnet50_trace.json.gz" \;

echo "== 2. second launch, step loaded from the compilation cache"
timeout 120 "$PY" -m experiments.benchmarks.benchmark "${ARGS[@]}" --batch_size=$B --steps=10 --no_loader \
  --compilation_cache_dir="$CACHE" --json="$OUT/resnet50_cached.json"

echo "== 3. same process, alternating rounds: cnnjax vs torchvision eager and torch.compile"
timeout 300 "$PY" -m experiments.benchmarks.benchmark "${ARGS[@]}" --batch_size=$B --torch --rounds=3 \
  --steps=20 --no_loader --compilation_cache_dir="$CACHE" --json="$OUT/resnet50_vs_torch.json"

if [ "${BENCH_JPEG:-1}" != 0 ]; then
  echo "== 4. ImageNet-shaped JPEGs (written once under \$OUT/jpegs): every loader, then the step fed"
  read -ra JPEG <<< "${BENCH_JPEG_ARGS:---images=20000 --workers=0,8,16 --batches=20 --model=resnet50}"
  timeout 480 "$PY" -m experiments.benchmarks.loaders --dir="$OUT/jpegs" --batch_size=$B \
    "${JPEG[@]}" --json="$OUT/loaders.json"
fi

[ "${BENCH_VARIANTS:-1}" = 0 ] && exit 0
echo "== 5. variants (no torch, default XLA flags unless named)"
variant() {  # name, timeout, then benchmark flags
  local name=$1 limit=$2; shift 2
  echo "-- $name"
  timeout "$limit" "$PY" -m experiments.benchmarks.benchmark "${ARGS[@]}" --steps=20 --rounds=2 --no_loader \
    --json="$OUT/v.json" "$@" && "$PY" -c "import json,sys; r=json.load(open(sys.argv[1])); \
j=r['jax']; print(json.dumps({'variant': sys.argv[2], 'images_per_s': j['images_per_s'], \
'pipelined_images_per_s': j['pipelined_images_per_s'], 'compile_s': j['compile_s'], \
'mfu': j.get('mfu'), 'peak_memory_bytes': j['peak_memory_bytes']}))" \
    "$OUT/v.json" "$name" >> "$OUT/variants.jsonl"
  rm -f "$OUT/v.json"
}
variant "plain stem and nn.max_pool" 120 --batch_size=$B \
  --model_kwargs='{"space_to_depth_stem": false, "fused_max_pool": false}'
variant "no CUDA graphs" 100 --batch_size=$B --xla_flags=--xla_gpu_enable_command_buffer=
variant "batch $((2 * B))" 150 --batch_size=$((2 * B))
variant "no autotuning" 150 --batch_size=$B --xla_flags=--xla_gpu_autotune_level=0
cat "$OUT/variants.jsonl"
