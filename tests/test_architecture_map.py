"""docs/architecture.md is the map: it names every module of the package, names only files and code that
exist, and each recipe names at most 3 files."""

import ast
import re
from pathlib import Path

from torch import nn

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "src" / "hybrid_distill"
DOC = (ROOT / "docs" / "architecture.md").read_text()
PROSE = re.sub(r"```.*?```", "", DOC, flags=re.S)  # the step's diagram is a sketch, not names to check
NAMED = re.findall(r"`([^`\n]+)`", PROSE)
RECIPES = ("A teacher", "A target kind at a block", "A masking strategy", "A decoder", "An evaluation protocol")


def modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def defined_names(path: Path) -> tuple[set[str], dict[str, set[str]]]:
    """A module's top-level names, and each of its classes' members (methods, fields, self.X attributes)."""
    tree = ast.parse(path.read_text())
    top, classes = set(), {}
    for node in tree.body:
        top |= assigned(node)
        if isinstance(node, ast.ClassDef):
            members = set().union(*(assigned(n) for n in node.body))
            members |= {t.attr for t in ast.walk(node) if isinstance(t, ast.Attribute) and is_self(t.value)}
            if any(ast.unparse(b) in ("nn.Module", "Module") for b in node.bases):
                members |= set(dir(nn.Module))  # state_dict(), forward(), ...
            classes[node.name] = members
    return top, classes


def assigned(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return {t.id for t in targets if isinstance(t, ast.Name)}


def is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


INDEX = {m: defined_names(PACKAGE / m) for m in modules()}
CLASSES = {name: members for _, classes in INDEX.values() for name, members in classes.items()}
EVERY_NAME = set().union(*(top | set().union(*classes.values(), set()) for top, classes in INDEX.values()))


def test_every_module_is_named():
    missing = [m for m in modules() if m not in NAMED]
    assert not missing, f"docs/architecture.md does not name {missing}: add each where it belongs, as `path.py`"


def test_every_file_named_exists():
    files = [n for n in NAMED if re.fullmatch(r"[\w./-]+\.(py|sh|json|yaml)", n)]
    placeholder = re.compile(r"(^|/)[^/]*[A-Z]{3,}")  # configs/NAME.yaml: a file the recipe creates
    gone = [f for f in files if not placeholder.search(f) and not (PACKAGE / f).exists() and not (ROOT / f).exists()]
    assert len(files) > len(modules()) and not gone, f"docs/architecture.md names files that do not exist: {gone}"


def test_every_code_name_exists():
    """`module.name`, `Class.member` and `function(...)` resolve in the package; a config key is written
    `key=VALUE` so that it is not read as code."""
    stale = [n for n in NAMED if not resolves(n)]
    assert not stale, f"docs/architecture.md names code the package does not define: {stale}"


def resolves(named: str) -> bool:
    call = re.fullmatch(r"([\w./]+)\(.*\)", named)
    name = call.group(1) if call else named
    if not re.fullmatch(r"[\w/]+(\.\w+)*", name) or name.endswith((".py", ".sh", ".json", ".yaml", ".md")):
        return True  # not a code name: a path, a key with a value, a shape, a placeholder
    head, *rest = name.split(".")
    in_modules = [INDEX[m] for m in INDEX if m[: -len(".py")] == head or Path(m).stem == head]
    if in_modules and rest:
        return any(member_of(top, classes, rest) for top, classes in in_modules)
    if head in CLASSES and rest:
        return rest[0] in CLASSES[head]
    return bool(rest) or not call or head in EVERY_NAME  # a bare call names something the package defines


def member_of(top: set[str], classes: dict[str, set[str]], rest: list[str]) -> bool:
    if rest[0] not in top:
        return False
    return len(rest) == 1 or rest[1] in classes.get(rest[0], set())


def test_each_recipe_names_at_most_three_files():
    recipes = re.split(r"^\*\*", DOC.split("## Recipes", 1)[1], flags=re.M)[1:]
    titles = [r.split("**")[0].rstrip(".") for r in recipes]  # **A teacher.** ...
    assert titles == list(RECIPES)
    for title, text in zip(titles, recipes):
        lists = re.findall(r"^Files: (.*)$", text, flags=re.M)
        assert lists, f"the recipe '{title}' names no files (a line 'Files: `a`, `b`.')"
        for line in lists:
            assert 1 <= len(re.findall(r"`([^`]+)`", line)) <= 3, f"'{title}': {line}"
