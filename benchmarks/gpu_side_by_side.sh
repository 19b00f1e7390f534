#!/usr/bin/env bash
# The peer (diffusers' DreamBooth step, PyTorch) and dbdist's JAX engine step, one after the other
# on the same GPU, then one table. One command, from the repository root:
#
#   bash benchmarks/gpu_side_by_side.sh [OUT_DIR]        # default OUT_DIR: $OUT, else ./side_by_side
#
# Before, where pip reaches PyPI: `bash benchmarks/fetch_gpu_wheels.sh` (the wheels the GPU machine
# lacks, into .gpu_wheels/, installed here into a private folder). Sized for one H200 in under 9
# minutes: each script has a time budget and skips (and names) the rows that would not fit. The
# JAX rows each compile once in a process of their own. Settings, as environment variables:
#   MODEL (sd-v1)  RESOLUTION (0: the preset's)  ROWS (2,8,32,32-ckpt,2-vae)  WARMUP (3)  STEPS (10)
#   TOTAL_BUDGET_S (510)  PEER_BUDGET_S (150)  PEAK_TFLOPS (0: from the GPU's name)
#   PYTHON (python3; on the GPU machine it has PyTorch and JAX), or PEER_PYTHON and JAX_PYTHON apart
#   (a CPU try-out: MODEL=tiny ROWS=2 STEPS=1 WARMUP=0 PEER_PYTHON=... JAX_PYTHON=... bash ...)
# Writes OUT_DIR/peer.json, OUT_DIR/dbdist_jax.json and OUT_DIR/side_by_side.md (the table).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
OUT_DIR=${1:-${OUT:-side_by_side}}
PYTHON=${PYTHON:-python3}
PEER_PYTHON=${PEER_PYTHON:-$PYTHON}
JAX_PYTHON=${JAX_PYTHON:-$PYTHON}
MODEL=${MODEL:-sd-v1}
RESOLUTION=${RESOLUTION:-0}
ROWS=${ROWS:-2,8,32,32-ckpt,2-vae}
WARMUP=${WARMUP:-3}
STEPS=${STEPS:-10}
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-510}
PEER_BUDGET_S=${PEER_BUDGET_S:-150}
PEAK_TFLOPS=${PEAK_TFLOPS:-0}
mkdir -p "$OUT_DIR"

GPU_WHEELS=${GPU_WHEELS-.gpu_wheels}  # GPU_WHEELS= (empty): use what the interpreters have
BASE_PATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
JAX_PATH=$BASE_PATH
if [ -n "$GPU_WHEELS" ] && compgen -G "$GPU_WHEELS/*.whl" >/dev/null; then
    SITE=$(mktemp -d /tmp/dbdist-bench-site.XXXX)
    trap 'rm -rf "$SITE"' EXIT
    "$JAX_PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$GPU_WHEELS"/*.whl || exit 1
    JAX_PATH="$SITE:$BASE_PATH"
fi
# One interpreter (the GPU machine): both sides see the wheels. Two (a CPU try-out): the wheels are
# built for JAX_PYTHON's Python, so the peer keeps its own packages.
PEER_PATH=$BASE_PATH
[ "$PEER_PYTHON" = "$JAX_PYTHON" ] && PEER_PATH=$JAX_PATH
export PYTHONUNBUFFERED=1
COMMON=(--model="$MODEL" --resolution="$RESOLUTION" --rows="$ROWS" --warmup="$WARMUP" --steps="$STEPS"
        --peak_tflops="$PEAK_TFLOPS")

echo "== peer: diffusers' train_dreambooth.py step (budget ${PEER_BUDGET_S} s)"
PYTHONPATH=$PEER_PATH "$PEER_PYTHON" benchmarks/diffusers_peer_step.py "${COMMON[@]}" \
    --time_budget_s="$PEER_BUDGET_S" --json="$OUT_DIR/peer.json"
peer_code=$?
JAX_BUDGET_S=$((TOTAL_BUDGET_S - (SECONDS - START)))
echo "== dbdist: the JAX engine's step (budget ${JAX_BUDGET_S} s)"
PYTHONPATH=$JAX_PATH KERAS_BACKEND=jax "$JAX_PYTHON" benchmarks/jax_dreambooth_step.py "${COMMON[@]}" \
    --block_tensorflow --time_budget_s="$JAX_BUDGET_S" --json="$OUT_DIR/dbdist_jax.json"
jax_code=$?

echo "== side by side ($((SECONDS - START)) s in all)"
if [ -f "$OUT_DIR/peer.json" ] && [ -f "$OUT_DIR/dbdist_jax.json" ]; then
    PYTHONPATH=$JAX_PATH "$JAX_PYTHON" benchmarks/step_rows.py "$OUT_DIR/peer.json" "$OUT_DIR/dbdist_jax.json" \
        | tee "$OUT_DIR/side_by_side.md"
fi
exit $(( peer_code || jax_code ))
