#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in about 7 minutes: every part of `hybrid-distill bench` for the
# paper's ViT-B setting (ViT-B/16 student, CLIP ViT-B/16 features + MAE ViT-B/16 relations, 224 px,
# random teacher weights: the same FLOPs and time, nothing downloaded), each under its own time limit,
# a failed part not stopping the others, in this order:
#   bench_compiled  plain vs optimised step (student and teachers compiled): % of bf16 peak; first, as
#                   compilation takes minutes (about 3 on an H200 for student and teachers)
#   bench_eager     plain vs optimised (eager) step, bf16 teachers and bf16 student switched off on their own
#   input           JPEG decode + RandomResizedCrop + flip: PIL and torchvision per CPU core, nvJPEG on
#                   the GPU, on 400 x 350 quality-90 JPEGs written here; cores per GPU to feed the step
#   fp8             FP8 teachers: targets' relative error against bf16, speed ratio (teachers, step)
#   versus          the Hybrid step against the Distill-CLIP step (paper appendix D: ~1.2x)
#   memory          ViT-L/16 student, ViT-L/14 CLIP + ViT-L/16 MAE teachers, activation checkpointing:
#                   peak GiB per batch up to the largest that fits
#   sweep           the ViT-B step at batch 128 ... 1024: img/s, peak GiB, % of bf16 peak
# then one summary table (the end of stdout). Writes $OUT/log.txt (everything) and one JSON per part.
#   bash scripts/gpu_check.sh            # PY=python3 to use another interpreter, BUDGET=seconds (420)
#   bash scripts/gpu_check.sh --smoke    # every part on the CPU with tiny models: the code paths, in minutes
#   ONLY=bench_compiled COMPILED_CAP=480 BUDGET=520 bash scripts/gpu_check.sh   # the compiled part alone
# ONLY: the parts to run (comma-separated; env always runs). The compiled bench stops starting steps
# 30 s before its part's time limit (`bench --deadline`), so it reports before `timeout` ends it, and
# writes its raw repeats to bench_compiled.partial.json after each repeat.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu_check}
BUDGET=${BUDGET:-420}  # seconds for all parts; each also has its own cap below
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # also without `pip install -e .`
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
PARTS=$(mktemp -d)
SUMMARY=()

if [[ "${1:-}" == --smoke ]]; then  # tiny models on the CPU; compilation only with SMOKE_COMPILE=1 (slow there)
    DEV=(--device cpu --smoke); B=4; BATCHES=4,8; LBATCHES=4,8; STEPS=(--steps 1 --warmup 1); SECONDS_PER_PATH=1
    COMPILE=(--compile "$([[ ${SMOKE_COMPILE:-0} == 1 ]] && echo on || echo off)" --precision bf16 --steps 1 --warmup 1)
    CAPX=6; BUDGET=${SMOKE_BUDGET:-2400}  # a shared CPU is slow: longer limits
else
    DEV=(--device cuda); B=256; BATCHES=128,256,512,1024; LBATCHES=256,512,1024,2048,4096; STEPS=(--steps 4 --warmup 2)
    SECONDS_PER_PATH=3; COMPILE=(--compile on --steps 4 --warmup 1)  # compiled: medians robust to a late warm-up
fi
RANDOM_TEACHERS=(teachers.clip.arch=vit_base_patch16_clip_quickgelu_224 teachers.clip.weights=random
                 teachers.mim.arch=vit_base_patch16_224 teachers.mim.weights=random)
BENCH=("$PY" -m hybrid_distill.cli bench)

# part NAME CAP CMD...: CMD under `timeout` of min(CAP, what is left of BUDGET); its output to the log,
# its last lines (its table, or its error) to stdout
part() {
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - SECONDS)) start=$SECONDS rc
    if [[ -n "${ONLY:-}" && $name != env && ",$ONLY," != *",$name,"* ]]; then
        return
    fi
    cap=$((cap * ${CAPX:-1}))
    local limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        SUMMARY+=("$name: skipped, the time budget is spent"); return
    fi
    echo "=== $name (limit ${limit} s) ===" | tee -a "$LOG"
    local args=("${@//@DEADLINE@/$((limit - 30))}")  # a bench's own deadline: 30 s before timeout's
    timeout -k 30 "$limit" "${args[@]}" > "$PARTS/$name.txt" 2>&1
    rc=$?
    cat "$PARTS/$name.txt" >> "$LOG"
    grep -v '^repeat ' "$PARTS/$name.txt" | tail -n 22
    SUMMARY+=("$name: exit code $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)') in $((SECONDS - start)) s")
}

part env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true; \
    \"$PY\" -c \"import torch, torchvision, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
    'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda available', torch.cuda.is_available()); \
    print('capability', torch.cuda.get_device_capability() if torch.cuda.is_available() else None)\"; \
    git log -1 --format='commit %h %s' 2>/dev/null || true"
COMPILED_CAP=${COMPILED_CAP:-210}
part bench_compiled "$COMPILED_CAP" "${BENCH[@]}" configs/hybrid_vitb_mae_clip.yaml "${DEV[@]}" --batch "$B" \
    "${COMPILE[@]}" --no-ablation --deadline @DEADLINE@ \
    --out "$OUT/bench_compiled.json" "${RANDOM_TEACHERS[@]}"
part bench_eager 60 "${BENCH[@]}" configs/hybrid_vitb_mae_clip.yaml "${DEV[@]}" --batch "$B" "${STEPS[@]}" \
    --compile off --out "$OUT/bench_eager.json" "${RANDOM_TEACHERS[@]}"
part input 40 "${BENCH[@]}" --input-pipeline "$PARTS/jpegs" --make 512 --seconds "$SECONDS_PER_PATH" \
    --device "${DEV[1]}" --step-json "$OUT/bench_compiled.json" --out "$OUT/input.json"
part fp8 40 "${BENCH[@]}" --fp8 "${DEV[@]}" --batch "$B" --steps 3 --warmup 1 --out "$OUT/fp8.json"
part versus 40 "${BENCH[@]}" --versus-distill "${DEV[@]}" --batch "$B" --steps 3 --warmup 1 --out "$OUT/versus.json"
part memory 80 "${BENCH[@]}" --memory "${DEV[@]}" --batches "$LBATCHES" --steps 1 --warmup 1 --out "$OUT/memory.json"
part sweep 40 "${BENCH[@]}" --batch-sweep "${DEV[@]}" --batches "$BATCHES" --steps 2 --warmup 1 --out "$OUT/sweep.json"

echo "=== summary (every part's output: $LOG) ===" | tee -a "$LOG"
printf '%s\n' "${SUMMARY[@]}" | tee -a "$LOG"
"$PY" -m hybrid_distill.cli bench --report "$OUT" 2>&1 | tee -a "$LOG"
rm -rf "$PARTS"
