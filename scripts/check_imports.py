"""The project's import rules, checked on the source (``make lint`` runs it):

- no import cycles between the project's modules (every import statement counts, also one
  inside a function);
- a recipe (``trainers_*/sft.py``, ``grpo.py``, ``collatz.py``) is imported only by scripts,
  benchmarks and the submission (which run it), never by another recipe, a library module or evals;
- ``common/`` imports only ``common/``;
- the trainers' library modules never import ``evals/`` (evals load models through them).

    python -m scripts.check_imports [--root DIR]

Prints each violation and exits 1; prints a one-line summary and exits 0 when there are none.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGES = ("common", "scripts", "trainers_torch", "trainers_jax", "evals", "submission", "benchmarks")
RECIPE_NAMES = ("sft", "grpo", "collatz")
RECIPES = {f"{pkg}.{name}" for pkg in ("trainers_torch", "trainers_jax") for name in RECIPE_NAMES}
MAY_RUN_RECIPES = ("scripts", "submission", "benchmarks")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement of the module can bind (``from a import b`` gives
    ``a`` and ``a.b``); relative imports resolved against the module's package."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the project modules it imports (a name resolves to its longest project prefix)."""
    files = {
        module_name(root, p): p
        for pkg in PACKAGES
        if (root / pkg).is_dir()
        for p in sorted((root / pkg).rglob("*.py"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for name in imported_names(tree, module, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            if target in RECIPES and top not in MAY_RUN_RECIPES:
                out.append(f"{module} imports the recipe {target} (recipes import library modules only)")
            if top == "common" and target.split(".")[0] != "common":
                out.append(f"{module} imports {target} (common/ imports only common/)")
            if top.startswith("trainers_") and module not in RECIPES and target.split(".")[0] == "evals":
                out.append(f"{module} imports {target} (a trainer library module never imports evals/)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.check_imports", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    root = Path(parser.parse_args(argv).root)
    graph = import_graph(root)
    found = violations(graph)
    for line in found:
        print(line)
    edges = sum(len(t) for t in graph.values())
    print(f"imports: {len(graph)} modules, {edges} edges, {len(found)} violations")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
