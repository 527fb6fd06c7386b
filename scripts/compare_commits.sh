#!/usr/bin/env bash
# Bench two commits back to back on this machine: RUNS alternating runs of each (OLD, NEW, OLD, NEW, ...)
# of the README's CPU bench (ViT-S/16 student, ViT-B/16 CLIP + MAE teachers, random weights, batch 8),
# and the medians of the optimised step's images/s in bf16 and fp32, with NEW / OLD.
#
#   scripts/compare_commits.sh OLD NEW            # e.g. scripts/compare_commits.sh 50ba136 HEAD
#   RUNS=3 STEPS=5 WARMUP=2 DEVICE=cpu scripts/compare_commits.sh OLD NEW
#
# Each commit is checked out in a worktree under runs/compare/ and run with this checkout's .venv
# (PYTHONPATH points at the worktree's src/). Results: runs/compare/<commit>-<run>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: $0 OLD NEW}
NEW=${2:?usage: $0 OLD NEW}
RUNS=${RUNS:-3}
STEPS=${STEPS:-5}
WARMUP=${WARMUP:-2}
DEVICE=${DEVICE:-cpu}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
OUT=$PWD/runs/compare
mkdir -p "$OUT"

tree() {  # a worktree of commit $1 at runs/compare/<sha>
  local sha
  sha=$(git rev-parse --short "$1")
  if [ ! -d "$OUT/$sha" ]; then
    git worktree add --detach "$OUT/$sha" "$sha" >/dev/null
  fi
  echo "$sha"
}

bench() {  # commit sha, run number
  (cd "$OUT/$1" && PYTHONPATH="$OUT/$1/src" "$PYTHON" -m hybrid_distill.cli bench configs/hybrid_vitb_mae_clip.yaml \
    --student vit_small_patch16_224 --batch 8 --steps "$STEPS" --warmup "$WARMUP" --device "$DEVICE" \
    --precision bf16 --no-ablation --out "$OUT/$1-$2.json" \
    teachers.clip.arch=vit_base_patch16_clip_quickgelu_224 teachers.clip.weights=random \
    teachers.mim.arch=vit_base_patch16_224 teachers.mim.weights=random teachers.mim.relation_heads=head_mean \
    >"$OUT/$1-$2.log" 2>&1)
}

old=$(tree "$OLD")
new=$(tree "$NEW")
for run in $(seq 1 "$RUNS"); do
  for sha in "$old" "$new"; do
    echo "run $run: $sha" >&2
    bench "$sha" "$run"
  done
done

"$PYTHON" - "$OUT" "$old" "$new" "$RUNS" <<'EOF'
import json, statistics, sys
out, old, new, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = {"bf16": "optimised", "fp32": "optimised fp32"}
print(f"CPU/GPU: {json.load(open(f'{out}/{old}-1.json'))['provenance']['device']}")
for precision, name in steps.items():
    rates = {sha: [json.load(open(f"{out}/{sha}-{r}.json"))["steps"][name]["images_per_s"]
                   for r in range(1, runs + 1)] for sha in (old, new)}
    med = {sha: statistics.median(v) for sha, v in rates.items()}
    print(f"{precision}: {old} img/s {[round(v, 2) for v in rates[old]]} median {med[old]:.2f}; "
          f"{new} img/s {[round(v, 2) for v in rates[new]]} median {med[new]:.2f}; "
          f"new / old {med[new] / med[old]:.3f}")
EOF
