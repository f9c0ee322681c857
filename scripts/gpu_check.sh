#!/usr/bin/env bash
# One-GPU check, under 5 minutes: training throughput of this project's loop (plain and through
# Ray Train with --gpu) vs the tutorial's loop on the same GPU, on a CIFAR-10-sized generated
# set (50k/10k, 3 epochs), plus Ray Data prediction with --gpus-per-actor 1, and GPU memory;
# then ResNet-18 at 224 px streamed from image files: training (Ray Train) and prediction.
#   scripts/gpu_check.sh [OUT_DIR]        # JSON results go to OUT_DIR (default: gpu-check/)
# Needs only python3 with torch, torchvision, pillow, pyarrow (and ray for the Ray parts):
# without ray it says so and runs the rest. For the device machine, carry missing wheels in
# .whl/ (see the device tool's README) and set PYTHONPATH to where they were installed.
set -uo pipefail
case "${1:-}" in
  -h|--help) echo "Usage: scripts/gpu_check.sh [OUT_DIR]"; echo
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "gpu_check: unknown option '$1' (usage: scripts/gpu_check.sh [OUT_DIR])" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$PY - <<'PY' || { echo "gpu_check: no CUDA GPU visible to torch" >&2; exit 1; }
import torch
assert torch.cuda.is_available()
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
PY
if $PY -c "import ray" 2>/dev/null; then RAYFLAG=""; else
  echo "gpu_check: ray is not importable here: skipping the Ray Train and Ray Data parts" >&2
  RAYFLAG="--no-ray"
fi
echo "== training: tutorial loop vs project loop (plain${RAYFLAG:+ only}, Ray Train 1 worker)"
$PY -m benchmarks.train --device cuda --train 50000 --test 10000 --epochs 3 --target 0.5 \
  $RAYFLAG --json "$OUT/train.json"
if [ -z "$RAYFLAG" ]; then
  echo "== prediction: Ray Data job with --gpus-per-actor 1 vs one image at a time"
  $PY -m benchmarks.predict --small 20000 --large 500 --repeats 1 --gpus-per-actor 1 \
    --json "$OUT/predict.json"
  echo "== ResNet-18 at 224 px, streamed from files: training through Ray Train, then prediction"
  $PY -m jobs.data synthetic "$OUT/photos" --folders --classes 10 --train 5000 --test 1000
  $PY -m jobs.train --data-dir "$OUT/photos" --arch resnet18 --image-size 224 --epochs 2 --gpu \
    --data-loading stream --storage-path "$OUT/runs" --name resnet18-224
  $PY -m jobs.predict --model "$OUT/runs/resnet18-224" --input "$OUT/photos/val" \
    --output "$OUT/resnet18-preds" --labels-from-dirs --gpus-per-actor 1
  # images/s: runs/resnet18-224/summary.json (train_images_per_s), resnet18-preds/_summary.json
fi
echo "gpu_check: results in $OUT/"
