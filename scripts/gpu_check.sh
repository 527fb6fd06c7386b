#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in under 8 minutes: `hybrid-distill bench` for the ViT-B paper
# setting (ViT-B student, CLIP ViT-B/16 features + MAE ViT-B/16 relations, 224 px, batch 128, bf16,
# student and teachers compiled) against the plain step (4.6 minutes on an H200, most of it
# compilation), then the default test suite (tiny runs use train.device=auto, so they train on CUDA
# there; tests/test_cuda.py adds bf16 + torch.compile). The slow set is left to CI: with it the suite
# did not finish in 3 minutes on the H200 (SIGKILL/torchrun process tests, ViT-B loading on the CPU).
# Writes $OUT/{gpu.txt,pytest.txt,bench.txt,bench.json}. Teacher weights are random (same FLOPs and
# time as the real ones; nothing is downloaded).
#   bash scripts/gpu_check.sh            # PY=/path/to/python to use another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu_check}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # also without `pip install -e .`
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, timm; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; \
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

# 1. the paper-setting bench (about 3 minutes: compilation, 3 warm-up and 10 timed repeats of every variant)
bench=0
timeout 300 "$PY" -m hybrid_distill.cli bench configs/hybrid_vitb_mae_clip.yaml --device cuda --batch 128 \
    --steps 10 --warmup 3 --out "$OUT/bench.json" \
    teachers.clip.arch=vit_base_patch16_clip_quickgelu_224 teachers.clip.weights=random \
    teachers.mim.arch=vit_base_patch16_224 teachers.mim.weights=random 2>&1 | tee "$OUT/bench.txt" || bench=$?

# 2. the default tests (3 minutes at most)
tests=0
timeout 180 "$PY" -m pytest -q -p no:cacheprovider -rf --durations=8 2>&1 | tee "$OUT/pytest.txt" \
    || tests=$?
echo "gpu_check: bench exit code $bench, tests exit code $tests (124: timed out); figures in $OUT/bench.json"
exit $((bench || tests))
