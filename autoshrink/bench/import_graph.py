"""The package's import graph, read from the source (every import, module-level or lazy), and the
checks that keep it the one-way flow of the architecture (docs/design.md):

    python -m autoshrink.bench.import_graph            # each module and what it imports, by layer
    python -m autoshrink.bench.import_graph --check    # exit 1 on a cycle, an upward import, a private name

Layers, lowest first; a module may import its own layer and those below it, never one above.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
# The data flow: errors/threads/sites (shared utilities and vocabulary) -> data -> models -> methods
# -> calibrate -> plan -> measure -> allocate -> search -> front -> final; bench measures all of them; the API calls them;
# the CLI calls the API. Nothing but the CLI (and the package's front doors) imports the API.
LAYERS = [
    "errors",
    "threads",
    "provenance",
    "sites",
    "data",
    "models",
    "methods",
    "calibrate",
    "plan",
    "measure",
    "allocate",
    "search",
    "front",
    "final",
    "bench",
    "api",
    "cli",
]
ENTRY = {"autoshrink", "autoshrink.__main__"}  # the package's front doors: they may import api and cli


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The package module an import names (a name imported from a module is that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> names imported from it (`*` for a whole-module import), for one module's source."""
    out: dict[str, set[str]] = {}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := _resolve(alias.name, known)) is not None:
                    out.setdefault(target, set()).add("*")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if not base.startswith("autoshrink"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from autoshrink.methods import _storage`: the submodule itself
                    out.setdefault(sub, set()).add("*")
                elif (target := _resolve(base, known)) is not None:
                    out.setdefault(target, set()).add(alias.name)
    out.pop(name, None)
    return out


def graph() -> dict[str, dict[str, set[str]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def cycles(g: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Every import cycle (as found by a depth-first search; each reported once by its first module)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(g.get(node, {})):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    return found


def problems(g: dict[str, dict[str, set[str]]] | None = None) -> list[str]:
    """What breaks the one-way flow: cycles, imports of a higher layer (api/cli included), private
    names imported from another module."""
    g = graph() if g is None else g
    out = [" -> ".join(c) for c in cycles(g)]
    for name, targets in sorted(g.items()):
        for target, names in sorted(targets.items()):
            if name in ENTRY:
                continue
            a, b = layer(name), layer(target)
            if a is not None and b is not None and b > a and LAYERS[b] in ("api", "cli"):
                out.append(f"{name} imports {target}: nothing inside the package imports the API or the CLI")
            elif a is not None and b is not None and b > a:
                out.append(f"{name} ({LAYERS[a]}) imports {target} ({LAYERS[b]}), a later layer")
            private = sorted(n for n in names if n.startswith("_") and not n.startswith("__"))
            if private:
                out.append(f"{name} imports private name(s) {', '.join(private)} of {target}")
            owner, _, last = target.rpartition(".")
            if (
                last.startswith("_")
                and not last.startswith("__")
                and name != owner
                and not name.startswith(owner + ".")
            ):
                out.append(f"{name} imports {target}, a private module of {owner}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="print only what breaks the flow; exit 1 if anything does")
    args = p.parse_args(argv)
    g = graph()
    found = problems(g)
    if not args.check:
        for name in sorted(g, key=lambda n: (layer(n) if layer(n) is not None else -1, n)):
            where = LAYERS[layer(name)] if layer(name) is not None else "package"
            print(f"[{where}] {name}")
            for target in sorted(g[name]):
                print(f"    -> {target}")
    for line in found:
        print(f"problem: {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
