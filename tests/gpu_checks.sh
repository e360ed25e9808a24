#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go (CI has none; tests/test_cuda.py skips there):
#   1. tests/test_cuda.py: bf16 and fp16 + gradient scaler, channels_last, the GPU input path inside fit,
#      torch.compile, predict and resume on CUDA;
#   2. the benchmark of the default recipe (ShuffleNet V2 x1.0, 224 px, batch 256) on 65,000 + 4,952 generated
#      course-size JPEGs: end to end / model alone, seconds per epoch, test-set inference;
#   3. the notebook, headless, with the default recipe (shufflenet preset) on generated data.
# Usage: bash tests/gpu_checks.sh [OUT_DIR]   (PYTHON=... to use another interpreter; default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-gpu-check}
mkdir -p "$OUT"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
$PY -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log"
$PY -m loops bench --device cuda --batch-size 256 --image-size 224 --json --work-dir "$OUT/bench" | tee "$OUT/bench.json"
$PY -m coco.synthetic "$OUT/data" --train 4000 --test 400
# pretrained: false only because a GPU machine without internet cannot download ShuffleNet's weights
MSCOCO_ROOT="$OUT/data" $PY -m papermill challenge.ipynb "$OUT/challenge-gpu.ipynb" -p PRESET shufflenet \
    -p RUNS_DIR "$OUT/runs" -p PREDICTIONS_PATH "$OUT/predictions.json" -p FIGURES_DIR "$OUT/figures" \
    -y "OVERRIDES: {epochs: 3, pretrained: false}"
echo "GPU checks done: $OUT"
