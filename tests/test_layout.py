"""The package's import graph, read from the source with `ast` (nothing is imported or compiled).

Two rules (docs: issue 24, "one home for each idea"):

1. No cycle between packages: the nodes are dsbs_jax's subpackages (`data`, `teacher`, `model`,
   `train`, ...) and its top-level modules (`errors`, `records`, ...); `a -> b` when a module of
   `a` imports one of `b`. Imports inside a package do not count.
2. Imports of our own modules sit at module level, except in `dsbs_jax/cli.py` and
   `dsbs_jax/commands/` (the commands import their library lazily so that `dsbs --help` and each
   command start fast). A function-level import of our own module hides a dependency, and most
   often a cycle.

`python tests/test_layout.py` prints the package graph.
"""

from __future__ import annotations

import ast
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "dsbs_jax"
LAZY_OK = ("dsbs_jax.cli", "dsbs_jax.commands")


def module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def node_of(module: str, modules: dict[str, pathlib.Path]) -> str:
    """The graph node of a module: its subpackage (`data`), or the top-level module (`errors`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return PACKAGE
    return parts[1]


def _resolve(name: str, modules: dict[str, pathlib.Path]) -> str | None:
    """The longest prefix of `name` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported(
    node: ast.AST, module: str, is_package: bool, modules: dict[str, pathlib.Path]
) -> list[str]:
    """Our modules that one import statement (or importlib.import_module("...") call) names."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            if not is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # `from a import b` imports a.b where b is a module, else a.
        names = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        names = [n for n in names[:-1] if n in modules] or [origin]
    elif (
        isinstance(node, ast.Call)
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called in ("import_module", "__import__"):
            names = [node.args[0].value]
    out = []
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            resolved = _resolve(name, modules)
            if resolved:
                out.append(resolved)
    return out


def imports(root: pathlib.Path = ROOT):
    """(importer, imported, line, module_level) for each import of one of our modules."""
    modules = module_files(root)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, nested: bool, module=module, is_package=is_package) -> None:
            for target in _imported(node, module, is_package, modules):
                found.append((module, target, getattr(node, "lineno", 0), not nested))
            inner = nested or isinstance(
                node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef
            )
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

        visit(tree, False)
    return found, modules


def package_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """{node: nodes it imports}, every import counted (module level or not)."""
    found, modules = imports(root)
    graph: dict[str, set[str]] = {node_of(m, modules): set() for m in modules}
    for importer, imported, _, _ in found:
        a, b = node_of(importer, modules), node_of(imported, modules)
        if a != b:
            graph[a].add(b)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return None


def _lazy_ok(module: str) -> bool:
    return any(module == ok or module.startswith(ok + ".") for ok in LAZY_OK)


def test_no_cycle_between_packages():
    graph = package_graph()
    cycle = find_cycle(graph)
    if cycle:
        found, modules = imports()
        links = []
        for a, b in zip(cycle, cycle[1:]):
            where = sorted(
                f"{importer}:{line} -> {imported}"
                for importer, imported, line, _ in found
                if node_of(importer, modules) == a and node_of(imported, modules) == b
            )
            links.append(f"  {a} -> {b}: " + "; ".join(where))
        raise AssertionError(
            "import cycle between packages: " + " -> ".join(cycle) + "\n" + "\n".join(links)
        )


def test_no_function_level_imports_of_our_modules():
    found, _ = imports()
    lazy = sorted(
        f"{importer}:{line} imports {imported}"
        for importer, imported, line, module_level in found
        if not module_level and not _lazy_ok(importer)
    )
    assert not lazy, "function-level imports of dsbs_jax modules:\n" + "\n".join(lazy)


def test_graph_covers_the_package():
    graph = package_graph()
    for node in ("data", "teacher", "model", "train", "interop", "experiments", "commands"):
        assert node in graph
    # The network and the data pipeline are the bottom: neither reaches the trainer.
    assert "train" not in graph["model"] and "data" not in graph["model"]


def main() -> int:
    graph = package_graph()
    width = max(map(len, graph))
    for node in sorted(graph):
        print(f"{node:<{width}} -> {', '.join(sorted(graph[node])) or '-'}")
    cycle = find_cycle(graph)
    print("cycle: " + (" -> ".join(cycle) if cycle else "none"))
    return 1 if cycle else 0


if __name__ == "__main__":
    sys.exit(main())
