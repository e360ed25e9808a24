#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go (CI has none; tests/test_cuda.py skips there):
#   1. tests/test_cuda.py: bf16 and fp16 + gradient scaler, channels_last, the GPU input path inside fit,
#      torch.compile, predict and resume on CUDA;
#   2. the GPU input path's safety net on CUDA: tests/test_hostile_inputs.py makes the path fail (at the first
#      batch and in epoch 2) and checks that the run goes on with DataLoader workers and says so;
#   3. the benchmark of the default recipe (ShuffleNet V2 x1.0, 224 px, batch 256) on 65,000 + 4,952 generated
#      course-size JPEGs: end to end / model alone, seconds per epoch, test-set inference;
#   4. the notebook, headless, as a student with a GPU runs it (RECIPES automatic: the default recipe; where
#      ShuffleNet's ImageNet weights cannot be downloaded, its stand-in) on generated data, 3 epochs.
# Usage: bash tests/gpu_checks.sh [WORK_DIR]   (PYTHON=... to use another interpreter; default .venv/bin/python)
# Each step writes its log to WORK_DIR; a step that fails is reported and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${1:-gpu-check}
mkdir -p "$WORK"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')" || exit 1
status=0
step() {  # step NAME COMMAND...: run it, log to WORK/NAME.log, report its exit status
    local name=$1; shift
    echo "== $name: $*"
    "$@" > "$WORK/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc"; tail -n 5 "$WORK/$name.log"
    [ "$rc" -eq 0 ] || status=1
}
step test_cuda $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step gpu_fallback $PY -m pytest -q -p no:cacheprovider tests/test_hostile_inputs.py \
    -k "gpu_path or input_path or workers_serve"
step bench bash -c "$PY -m loops bench --device cuda --batch-size 256 --image-size 224 --json --work-dir $WORK/bench > $WORK/bench.json"
step synthetic $PY -m coco.synthetic "$WORK/data" --train 4000 --test 400
step notebook env MSCOCO_ROOT="$WORK/data" $PY -m papermill challenge.ipynb "$WORK/challenge-gpu.ipynb" \
    -p RUNS_DIR "$WORK/runs" -p PREDICTIONS_PATH "$WORK/predictions.json" -p FIGURES_DIR "$WORK/figures" \
    -p PROGRESS False -y "OVERRIDES: {epochs: 3}"
echo "GPU checks done: $WORK (exit $status)"
exit $status
