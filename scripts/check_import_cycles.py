"""Fail when ra3d's modules import each other in a cycle (imports inside functions count).

The layers contract of import-linter (pyproject.toml) keeps the rooms in order; this keeps each
room free of cycles too. Usage: ``python scripts/check_import_cycles.py [PACKAGE]``; prints one line
per cycle and exits 1 if there is any.
"""

from __future__ import annotations

import sys

import grimp


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
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
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def main(package: str = "ra3d") -> int:
    built = grimp.build_graph(package)
    graph = {m: set(built.find_modules_directly_imported_by(m)) for m in built.modules}
    # A module importing its own parent package's __init__ is how Python loads it, not a cycle.
    for module, targets in graph.items():
        targets -= {t for t in targets if module.startswith(t + ".")}
    cycles = strongly_connected(graph)
    for cycle in cycles:
        print("import cycle: " + " <-> ".join(cycle))
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
