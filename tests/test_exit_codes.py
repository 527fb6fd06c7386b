"""README's list of exit codes names every code the commands return."""

import re
from pathlib import Path

from hybrid_distill import guards

ROOT = Path(__file__).resolve().parents[1]


def codes_in_source() -> set[int]:
    """`return N` / `sys.exit(N)` literals of the package, and the guards' named codes."""
    found = {getattr(guards, name) for name in dir(guards) if name.startswith("EXIT_")}
    for path in (ROOT / "src" / "hybrid_distill").rglob("*.py"):
        text = path.read_text()
        if "def main" in text or "_main(" in text:
            found |= {int(n) for n in re.findall(r"^\s+return (\d+)$", text, re.M)}
    return found


def test_readme_states_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    listed = {int(n) for n in re.findall(r"^- `(\d+)`:", readme, re.M)}
    assert codes_in_source() == listed, (codes_in_source(), listed)
    assert {0, 1, 2, 3, 4, 75, 130} <= listed
