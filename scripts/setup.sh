#!/usr/bin/env bash
# Set up everything on a fresh machine: a virtualenv in .venv with the package and its tests,
# and Fashion-MNIST through apt where it is missing and apt is usable. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: install Debian's dataset-fashion-mnist, or pass the IDX folder with --data" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
if ! { .venv/bin/python -c "import hybrid_distill, timm, torchvision, pytest" 2>/dev/null && [ -x .venv/bin/ruff ]; }; then
  # PyPI's Linux torch wheel brings its CUDA libraries: .venv takes 5.7 GiB, plus pip's temporary files.
  # Say so before pip dies half-way with "No space left on device" (only when torch is still to come).
  need_gib=8
  if [ -z "${HYBRID_DISTILL_SKIP_DISK_CHECK:-}" ] && ! .venv/bin/python -c "import torch" 2>/dev/null; then
    for dir in . "${TMPDIR:-/tmp}"; do
      [ -d "$dir" ] || continue
      avail_kib=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print $4}')
      free_gib=$(( ${avail_kib:-0} / 1048576 ))
      if [ -n "$avail_kib" ] && [ "$free_gib" -lt "$need_gib" ]; then
        echo "setup.sh: only $free_gib GiB free on $(cd "$dir" && pwd); torch with its CUDA libraries needs about" \
             "$need_gib GiB. Free space there (or point TMPDIR at a larger disk), then run this again;" \
             "HYBRID_DISTILL_SKIP_DISK_CHECK=1 skips this check." >&2
        exit 1
      fi
    done
  fi
  .venv/bin/pip install -q --upgrade pip
  # torch and torchvision at the pins of pyproject.toml's `tested` extra; --no-cache-dir: no second copy of
  # torch in pip's cache
  .venv/bin/pip install -q --no-cache-dir -e ".[test,tested]"
fi
