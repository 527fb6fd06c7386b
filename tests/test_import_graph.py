"""No import cycle among the package's modules, counting imports inside functions (STYLE rule 18:
configuration is the leaf; everything imports downwards)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "hybrid_distill"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__)."""
    names = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(node: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules one import statement names: `from a import b` is module a.b when that
    is a module, else a; relative imports are resolved against the importing module's package."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    found = set()
    for alias in node.names:
        child = f"{base}.{alias.name}"
        if child in modules:
            found.add(child)
        elif base in modules:
            found.add(base)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file (module level, functions,
    classes, conditionals: `ast.walk` visits them all)."""
    files = module_names(root)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(tree):
            edges |= imported(node, name, is_package, set(files))
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path a -> b -> ... -> a, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_config_schema_imports_nothing_of_the_package():
    assert import_graph()[f"{PACKAGE}.config_schema"] == set()


def write(root: Path, name: str, text: str) -> None:
    path = root / PACKAGE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    "a_text, b_text",
    [
        ("from . import b\n", "from .a import X\n"),  # module level, relative
        ("def f():\n    from hybrid_distill.sub import b\n", "from ..a import X\n"),  # in a function, absolute
        ("import hybrid_distill.sub.b\n", "class C:\n    def m(self):\n        from .. import a\n"),
    ],
)
def test_a_planted_cycle_is_found_and_named(tmp_path, a_text, b_text):
    nested = "sub" in a_text
    write(tmp_path, "__init__.py", "")
    write(tmp_path, "a.py", a_text)
    if nested:
        write(tmp_path, "sub/__init__.py", "")
    write(tmp_path, "sub/b.py" if nested else "b.py", b_text)
    b = f"{PACKAGE}.sub.b" if nested else f"{PACKAGE}.b"
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {f"{PACKAGE}.a", b}, cycle


def test_an_acyclic_package_passes(tmp_path):
    write(tmp_path, "__init__.py", "")
    write(tmp_path, "a.py", "from .b import X\n")
    write(tmp_path, "b.py", "import os\nfrom .c import Y\n")
    write(tmp_path, "c.py", "")
    assert find_cycle(import_graph(tmp_path)) is None
