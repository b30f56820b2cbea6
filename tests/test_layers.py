"""The architecture, checked: imports point down (bot → commands → rooms → storage → domain), the
code is linted (ruff: pyflakes and import order), and no first-party import hides in a function
except in the CLI's lazy start and the composition root."""
from __future__ import annotations

import ast
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
RANK = {"domain": 0, "storage": 1, "rooms": 2, "commands": 3, "bot": 4}
LAZY_ALLOWED = {"bot/cli.py", "bot/wiring.py"}


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node, [node.module]
        elif isinstance(node, ast.Import):
            yield node, [a.name for a in node.names]


def test_imports_point_down():
    bad = []
    for top, rank in RANK.items():
        for path in sorted((ROOT / top).rglob("*.py")):
            for node, names in _imports(path):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                        if RANK.get(n.split(".")[0], -1) > rank]
    assert not bad, "\n".join(bad)


def test_no_first_party_import_inside_a_function():
    bad = []
    for top in RANK:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in LAZY_ALLOWED or "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                             else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                    bad += [f"{rel}:{node.lineno} imports {n} inside {fn.name}()" for n in names
                            if n.split(".")[0] in RANK]
    assert not bad, "\n".join(bad)


def test_ruff_pyflakes_and_import_order():
    ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extras (pip install -e '.[test]')"
    result = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_graph_has_no_cycle():
    """Module-level first-party imports form no loop (a loop is what local imports used to hide)."""
    modules = {_module_name(p): p for top in RANK for p in (ROOT / top).rglob("*.py") if "migrations" not in p.parts}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        graph[name] = targets
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, " → ".join(cycle)


def test_handler_tables_merge_without_a_key_claimed_twice():
    import types

    from bot.wiring import merge_tables

    a = types.SimpleNamespace(__name__="a", POLL_HANDLERS={"x": 1})
    b = types.SimpleNamespace(__name__="b", POLL_HANDLERS={"x": 2})
    assert merge_tables([a], "POLL_HANDLERS") == {"x": 1}
    with pytest.raises(ValueError, match="deux fois"):
        merge_tables([a, b], "POLL_HANDLERS")
