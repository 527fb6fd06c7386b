#!/usr/bin/env bash
# Build the wheel with pip and install it into a fresh venv (its dependencies from the package index,
# torch reused from .venv's site-packages to save the download): import it and run the entry point.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/pip wheel --no-deps --no-build-isolation -q -w "$work/dist" .
python3 -m venv --system-site-packages "$work/venv"
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$site" > "$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/dotvenv.pth"
"$work/venv/bin/pip" install -q --no-deps "$work"/dist/hybrid_distill-*.whl
cd "$work"  # not the source tree: the import must come from the installed wheel
"$work/venv/bin/python" -c "import hybrid_distill, hybrid_distill.trainer; assert hybrid_distill.__file__.startswith('$work/venv/'), hybrid_distill.__file__"
"$work/venv/bin/hybrid-distill" --version
if [ -f "$OLDPWD/src/hybrid_distill/demo/replication.json" ]; then  # package data the demo quotes
  "$work/venv/bin/python" -c "import importlib.resources as r; assert r.files('hybrid_distill.demo').joinpath('replication.json').is_file(), 'replication.json missing from the wheel'"
fi
echo "wheel ok: $(ls "$work"/dist)"
