#!/usr/bin/env bash
# GPU readiness, run as is on a CUDA machine from the repository root (offline after the install):
#
#   bash benchmarks/gpu.sh [WORK]        # WORK: scratch folder (default /tmp/m3-gpu)
#
# 1. a fresh venv with the GPU extra (faiss-gpu; skip with M3_VENV=<an existing venv>),
# 2. gsplat's CUDA extension built with the right environment (CUDA_HOME, TORCH_CUDA_ARCH_LIST,
#    MAX_JOBS; minutes on a large machine, about 25 min on 2 cores; cached in ~/.cache/torch_extensions),
# 3. `pytest -m gpu` (the torch rasterizer against gsplat's CUDA one, forward and gradients),
# 4. the demo scene trained with the M3 reference schedule (30k steps at full size) with a
#    random-weight CLIP (no download), then evaluated: prints seconds, PSNR, SSIM, feature cosine
#    (beside the mean-feature baseline), Gaussians and peak GPU memory.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
WORK=${1:-/tmp/m3-gpu}
mkdir -p "$WORK"
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [[ -n "${M3_VENV:-}" ]]; then
  VENV=$M3_VENV
else
  VENV=$WORK/venv
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -c constraints.txt torch==2.15.0 torchvision==0.29.2
  "$VENV/bin/pip" install -q -c constraints.txt -e ".[dev,gpu]"
fi
PY=$VENV/bin/python
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print('GPU:', torch.cuda.get_device_name(0))"

# gsplat compiles its CUDA code with the toolkit matching torch's CUDA (13.x) on first use
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
echo "building gsplat: CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
start=$(date +%s)
"$PY" -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA build failed'"
echo "gsplat CUDA extension ready in $(( $(date +%s) - start )) s"

"$PY" -m pytest -q -m gpu "$REPO/tests"

# the demo with the reference schedule, in a scratch scene folder (the stages without DVC)
SCENE=$WORK/demo
rm -rf "$SCENE" && mkdir -p "$SCENE"
"$PY" - "$REPO/params.yaml" "$WORK/params.yaml" <<'PYEOF'
import sys, yaml
params = yaml.safe_load(open(sys.argv[1]))
params["models"] = ["clip"]
params["features"]["clip"].update(weights="random", input_size=224)
params["train"]["schedule"] = "reference"
yaml.safe_dump(params, open(sys.argv[2], "w"), sort_keys=False)
PYEOF
M3=$VENV/bin/m3
P=(--params "$WORK/params.yaml")
for stage in "demo-scene $SCENE" "frames $SCENE" "poses $SCENE" "features $SCENE --model clip" "bank $SCENE --model clip"; do
  $M3 $stage "${P[@]}"
done
start=$(date +%s)
$M3 --no-progress train "$SCENE" "${P[@]}"
train_s=$(( $(date +%s) - start ))
$M3 evaluate "$SCENE" "${P[@]}"
"$PY" - "$SCENE" "$train_s" <<'PYEOF'
import json, sys
from pathlib import Path
scene, seconds = Path(sys.argv[1]), sys.argv[2]
m = json.loads((scene / "eval" / "metrics.json").read_text())
s = json.loads((scene / "model" / "stats.json").read_text())
f = m["features"]["clip"]
print(f"reference schedule on the demo (random CLIP): {s['steps']} steps in {seconds} s "
      f"(train stage {s['seconds']} s), {m['gaussians']} Gaussians, peak GPU memory {s.get('peak_gpu_mb')} MB")
print(f"held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}, clip cosine {f['cosine']:.4f} "
      f"(mean feature {f['baseline_cosine']:.4f}), L2 {f['l2']:.4f}")
PYEOF
