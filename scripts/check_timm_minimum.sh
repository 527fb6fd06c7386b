#!/usr/bin/env bash
# Run the model tests against the timm minimum that pyproject.toml declares (installed apart, under
# /tmp, in front of the .venv's newer timm). Usage: scripts/check_timm_minimum.sh [VERSION]
# Offline: pip reads its configured index (a local mirror, PIP_FIND_LINKS), and an install already under
# /tmp is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-$(sed -n 's/.*"timm>=\([0-9.]*\)".*/\1/p' pyproject.toml)}
TARGET=/tmp/hybrid-distill-timm-$VERSION
if [ ! -d "$TARGET/timm" ]; then
  rm -rf "$TARGET.partial"
  .venv/bin/pip install -q --no-deps --target "$TARGET.partial" "timm==$VERSION" || {
    echo "check_timm_minimum.sh: pip could not install timm==$VERSION; offline, put its wheel in a folder named" \
         "by PIP_FIND_LINKS and run this again" >&2
    exit 1
  }
  rm -rf "$TARGET" && mv "$TARGET.partial" "$TARGET"  # whole or absent: an interrupted install is not reused
fi
export PYTHONPATH=$TARGET${PYTHONPATH:+:$PYTHONPATH}
.venv/bin/python -c "import timm, sys; v = timm.__version__; print('timm', v); sys.exit(v != '$VERSION')"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/test_install.py tests/test_models.py tests/test_regression.py
