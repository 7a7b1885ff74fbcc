"""The import graph of oscar_core and oscar_eval (DESIGN.md: no import cycles; a lower layer never
imports a higher one).

Static, from the source files (ast): every ``import``/``from ... import`` counts, at module level and
inside functions alike. A function-level import is how a cycle usually hides (it runs fine until the
call order changes), so it is a dependency like any other. Imports under ``if TYPE_CHECKING:`` do not
count: they never run and only name types for annotations. An edge goes to the module named, not to
the packages above it: ``from oscar_core.cache.layer import X`` depends on ``oscar_core.cache.layer``
(running ``oscar_core/cache/__init__.py`` first is Python's business; counting it would make every
re-exporting package a cycle with its own modules). ``from pkg import name`` names ``pkg.name`` when
that is a module of ours, else ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("oscar_core", "oscar_eval")


def module_names() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a (possibly relative) ``from`` import names."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours that ``module`` imports anywhere in its source."""
    found = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path, node)
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a non-module attribute: the nearest module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = module_names()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]], inside: str) -> set[tuple[str, ...]]:
    """Strongly connected components of more than one module among the modules under ``inside``
    (Tarjan's algorithm), each as its sorted module names."""
    nodes = [n for n in graph if n == inside or n.startswith(inside + ".")]
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: set[tuple[str, ...]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in nodes:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.add(tuple(sorted(component)))

    for n in nodes:
        if n not in index:
            visit(n)
    return out


def test_the_graph_sees_the_packages_and_their_imports():
    graph = import_graph()
    assert "oscar_core.cache.layer" in graph and "oscar_eval.cli" in graph
    assert "oscar_core.cache.storage" in graph["oscar_core.cache.layer"]  # module level
    assert "oscar_core.kernel_cache" in graph["oscar_core.cache.cache"]  # inside make_cache


def test_oscar_core_has_no_import_cycle():
    assert cycles(import_graph(), "oscar_core") == set()


def test_the_cache_package_and_the_kernel_layer_form_no_cycle():
    graph = import_graph()
    inside = {n: deps for n, deps in graph.items() if n.startswith("oscar_core.cache") or n == "oscar_core.kernel_cache"}
    assert cycles(inside, "oscar_core") == set()
    assert "oscar_core.cache.cache" not in graph["oscar_core.kernel_cache"]


def test_oscar_core_never_imports_oscar_eval():
    graph = import_graph()
    wrong = {(a, b) for a, deps in graph.items() if a.startswith("oscar_core") for b in deps
             if b.startswith("oscar_eval")}
    assert wrong == set()


def test_oscar_eval_has_no_import_cycle():
    assert cycles(import_graph(), "oscar_eval") == set()


def reachable(graph: dict[str, set[str]], start: list[str]) -> set[str]:
    """Every module that the ``start`` modules import, directly or through others."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_store_knows_nothing_of_benchmarks():
    # DESIGN.md: the results store sits below the benchmarks (the API hands it their summarize)
    graph = import_graph()
    store = [n for n in graph if n.startswith("oscar_eval.store.")]
    assert {"oscar_eval.store.results", "oscar_eval.store.merge", "oscar_eval.store.sharding",
            "oscar_eval.store.run_identity"} <= set(store)
    above = ("oscar_eval.benchmarks", "oscar_eval.scoring", "oscar_eval.api", "oscar_eval.commands",
             "oscar_eval.cli", "oscar_eval.run_setup", "oscar_eval.runner", "oscar_eval.models")
    assert {m for m in reachable(graph, store) if m.startswith(above)} == set()


def test_cycle_finder_finds_a_cycle_and_nothing_else():
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "q.x": {"p.a"}}
    assert cycles(graph, "p") == {("p.a", "p.b", "p.c")}
    assert cycles({"p.a": {"p.b"}, "p.b": set()}, "p") == set()
