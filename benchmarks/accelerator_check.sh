#!/usr/bin/env bash
# The measurements behind models/layers.py's per-backend convolution choice,
# in one call on a GPU or TPU machine (sized for 5 minutes on one GPU; not
# yet run on one):
#
#   bash benchmarks/accelerator_check.sh [OUT_DIR]
#
# 1. Training throughput of stage one and MS-VAE at batch 64 and 256, in
#    float32 and bfloat16, with the strided convolutions computed both ways
#    (flax's plain computation and the XLA:CPU reformulation), side by side
#    in one process per dtype (benchmarks/training_throughput.py).
# 2. Where batches come from: rendered in the step, the array in device or
#    host memory, a host input pipeline (benchmarks/data_placement.py).
#
# Each table is written to OUT_DIR (default: benchmarks/results/<backend>),
# with the machine it ran on. STEPS, ROUNDS, MODELS and BATCH_SIZES override
# the defaults (e.g. a smoke run on a CPU: STEPS=1 ROUNDS=1 MODELS=stage1
# BATCH_SIZES=64).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python}"
backend="$("$python" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
out="${1:-benchmarks/results/${backend}}"
mkdir -p "$out"
steps="${STEPS:-10}" rounds="${ROUNDS:-3}"
models="${MODELS:-stage1,vae}" batch_sizes="${BATCH_SIZES:-64,256}"

for dtype in float32 bfloat16; do
  echo "== training throughput, ${dtype}: ${out}/training_${dtype}.txt"
  "$python" -m benchmarks.training_throughput --models="$models" \
      --batch_sizes="$batch_sizes" --compute_dtype="$dtype" \
      --formulations=plain,reformulated --steps="$steps" --rounds="$rounds" \
      2>"$out/training_${dtype}.log" | tee "$out/training_${dtype}.txt"
done
for batch_size in ${batch_sizes//,/ }; do
  echo "== data placement, batch ${batch_size}: ${out}/data_placement_${batch_size}.txt"
  "$python" -m benchmarks.data_placement --batch_size="$batch_size" \
      --steps="$steps" --rounds="$rounds" \
      2>"$out/data_placement_${batch_size}.log" | tee "$out/data_placement_${batch_size}.txt"
done
