"""`python -m hybrid_distill ...` runs the `hybrid-distill` command (where the script is not on PATH)."""

import sys

from .cli import main

sys.exit(main())
