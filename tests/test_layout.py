"""The package's shape, checked: short modules, imports at module level (so a module's first lines
say what it uses), and no import circle between anchorlm's modules."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "anchorlm"
MODULES = sorted(PACKAGE.rglob("*.py"))
# modules with heavy or optional dependencies, imported where they are needed: peft (LoRA), fastapi
# and uvicorn (serve), openai (the NoveltyBench client)
LAZY_OK = {"anchorlm.train.lora", "anchorlm.serve.app", "anchorlm.serve.client"}


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree) -> list[tuple[str, bool]]:
    """(anchorlm module imported, at module level?) for every import of anchorlm in the tree."""
    top = {id(n) for n in tree.body}
    guarded = {id(n) for b in tree.body if isinstance(b, ast.If) for n in b.body}  # if TYPE_CHECKING:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anchorlm"):
            out.append((node.module, id(node) in top or id(node) in guarded))
    return out


def test_no_module_is_over_400_lines():
    assert len(MODULES) > 40
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert not long


def test_anchorlm_modules_are_imported_at_module_level():
    lazy = {
        (_name(p), mod)
        for p in MODULES
        for mod, at_top in _imports(ast.parse(p.read_text()))
        if not at_top and mod not in LAZY_OK
    }
    assert not lazy


def test_no_import_circle():
    graph = {_name(p): {m for m, _ in _imports(ast.parse(p.read_text()))} for p in MODULES}
    names = set(graph)
    for deps in graph.values():
        deps.intersection_update(names | {d.rsplit(".", 1)[0] for d in deps})
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if d == n or d not in graph:
                continue
            if state.get(d) == 1:
                cycle.append(" -> ".join([*path[path.index(d) :], d]) if d in path else f"{n} -> {d}")
            elif d not in state:
                visit(d, [*path, d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycle


def test_the_suites_scheduling_names_its_test_modules():
    """tests/conftest.py hands whole modules to the test workers by file name (SHARED groups the
    modules sharing a session fixture, SLOWEST orders the slow ones first): a renamed module must
    not silently leave its group, where its fixture would be built twice."""
    from conftest import SHARED, SLOWEST, scope_of

    modules = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    named = set().union(*SHARED.values()) | {s for s in SLOWEST if s not in SHARED}
    assert named <= modules, sorted(named - modules)
    assert scope_of("tests/test_sample.py::test_x[a::b]") == "smoke_run"
    assert scope_of("tests/test_cli.py::test_x") == "test_cli.py"
