#!/usr/bin/env bash
# Downloads, here, the wheels the GPU machine lacks for benchmarks/gpu_side_by_side.sh, into
# .gpu_wheels/ (ignored by git; carried to the machine with the working tree).
#
#   bash benchmarks/fetch_gpu_wheels.sh
#
# The machine (see README.md, "Speed on a GPU") has Python 3.12 with PyTorch 2.11 (CUDA 13), JAX
# 0.11 with its CUDA 13 plugin, optax, orbax-checkpoint, absl-py, h5py, rich, ml-dtypes, numpy,
# regex, safetensors, huggingface-hub, requests, filelock, Pillow, zipp and typing-extensions (as
# the workplace's list of that image gave them, 2026-11), no TensorFlow, and no network. It lacks
# Keras (and two of Keras' own requirements, namex and optree) and diffusers (and
# importlib_metadata, which diffusers requires). Exactly those are fetched, --no-deps, as
# binary wheels for CPython 3.12 on manylinux x86_64; the GPU command installs them with
# `pip install --no-index --no-deps --target`. Keras is constraints.txt's version (the one dbdist
# is tested with), diffusers the peer's (issue 11: diffusers 0.42.1).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu_wheels
PYTHON=${PYTHON:-python3}
WHEELS=(keras==3.15.1 namex==0.1.0 optree==0.20.0 diffusers==0.42.1 importlib_metadata==8.7.0)
# The whole working tree travels to the machine with at most 64 MiB; keep the wheels well under.
LIMIT_BYTES=$((32 * 1024 * 1024))

rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST.partial" "${WHEELS[@]}"
count=$(ls "$DEST.partial"/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
    echo "fetch_gpu_wheels: expected ${#WHEELS[@]} wheels, got $count:" "$DEST.partial"/* >&2
    exit 1
fi
total=$(cat "$DEST.partial"/*.whl | wc -c)
if [ "$total" -gt "$LIMIT_BYTES" ]; then
    echo "fetch_gpu_wheels: the wheels take $total bytes, more than $LIMIT_BYTES (the machine takes 64 MiB in all)" >&2
    exit 1
fi
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
ls -l "$DEST"
echo "fetch_gpu_wheels: $count wheels, $total bytes in $DEST/"
