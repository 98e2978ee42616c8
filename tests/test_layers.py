"""The package's layers point down only, with no import cycles and no private names across modules.
(Imports under `if TYPE_CHECKING:` serve annotations only and are not counted.)

kernels <- statistics <- algorithms / formats / model and data I/O <- collection <- commands <- front door
<- CLI. A lower layer that needs something from above takes it as an argument; commands (calibration,
evaluate, analyze, horizon, distributed, select) do not import each other. Read from the source with `ast`, so
imports inside functions count too.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [  # (layer, top-level modules or packages of ptqengine)
    ("kernels", {"_core", "_dtypes", "_version", "errors", "atomic"}),
    ("statistics", {"stats", "statsfile", "gpu"}),
    ("algorithms, formats, model and data I/O",
     {"algorithms", "result", "metrics", "formats", "model", "preprocess", "images", "datasource", "loader_script",
      "qdq"}),
    ("collection", {"collect"}),
    ("commands", {"calibration", "evaluate", "analyze", "horizon", "distributed", "select"}),
    ("front door", {"api", "demo", ""}),  # "": the package's own __init__ (lazy re-exports)
    ("CLI", {"cli"}),
]
LEVEL = {name: level for level, (_, names) in enumerate(LAYERS) for name in names}
COMMANDS = LAYERS[4][1]


def _modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted((ROOT / "pyengine").rglob("*.py")):
        rel = path.relative_to(ROOT / "pyengine").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(["ptqengine", *parts]), path
    for path in sorted((ROOT / "cli").rglob("*.py")):
        rel = path.relative_to(ROOT / "cli").with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join(["ptqengine", "cli", *parts]), path


def _imports(module: str, path: Path) -> Iterator[Tuple[str, Tuple[str, ...]]]:
    """(imported ptqengine module, names imported from it)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in type_only:  # annotations only: never executed
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("ptqengine"):
                yield target, tuple(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ptqengine"):
                    yield alias.name, ()


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer():
    missing = sorted({_top(m) for m, _ in _modules()} - set(LEVEL) - {""})
    assert missing == []


def test_layers_point_down_and_commands_do_not_import_each_other():
    wrong = []
    for module, path in _modules():
        own = _top(module)
        for target, _ in _imports(module, path):
            other = _top(target)
            if other in ("", own):
                continue
            if LEVEL[other] > LEVEL[own]:
                wrong.append(f"{module} -> {target} (upward)")
            elif own in COMMANDS and other in COMMANDS:
                wrong.append(f"{module} -> {target} (one command importing another)")
    assert wrong == []


def test_no_private_names_across_modules():
    private = [f"{module} imports {name} from {target}" for module, path in _modules()
               for target, names in _imports(module, path) for name in names
               if name.startswith("_") and not name.startswith("__") and target != module
               and not (name == "_core" and target == "ptqengine")]
    assert private == []


def test_no_import_cycles():
    graph: Dict[str, Set[str]] = {}
    for module, path in _modules():
        graph.setdefault(module, set())
        for target, names in _imports(module, path):
            graph[module].update(f"{target}.{n}" for n in names)
            graph[module].add(target)
    known = set(graph)
    for module in graph:  # `from . import sub` imports the submodule, not the package's __init__
        graph[module] = {t for t in graph[module]
                         if not any(f"{t}." in other for other in graph[module] if other in known)}
    graph = {m: {t for t in targets if t in known and t != m} for m, targets in graph.items()}
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its submodules is not a cycle of logic
    real = [c for c in cycles if not all(a.startswith(b) or b.startswith(a)
                                         for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert real == []
