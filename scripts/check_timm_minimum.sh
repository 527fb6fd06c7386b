#!/usr/bin/env bash
# Run the model tests against the timm minimum that pyproject.toml declares (installed apart, under
# /tmp, in front of the .venv's newer timm). Usage: scripts/check_timm_minimum.sh [VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-$(sed -n 's/.*"timm>=\([0-9.]*\)".*/\1/p' pyproject.toml)}
TARGET=/tmp/hybrid-distill-timm-$VERSION
[ -d "$TARGET/timm" ] || .venv/bin/pip install -q --no-deps --target "$TARGET" "timm==$VERSION"
PYTHONPATH=$TARGET .venv/bin/python -c "import timm; print('timm', timm.__version__)"
PYTHONPATH=$TARGET .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_install.py tests/test_models.py \
    tests/test_regression.py
