"""The package's layers, read from its source: imports only point down, and no two packages import
each other (directly or round a longer loop). Lazy imports inside functions count too.

A new package or top-level module must be given a layer in LAYERS before its imports are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "llava_ablate"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Bottom to top; a component may import its own layer's (without a cycle) and those below it.
LAYERS: list[tuple[str, ...]] = [
    (
        "base",
        "conf",
    ),  # distributed start/stop + agreed stops, file locks + atomic writes, chat, config errors;
    # conf: the Hydra config groups (YAML, no imports)
    # the structured configs, a run's identity, the environment it ran on, its W&B tracking
    ("config", "eval_config", "run_identity", "run_environment", "tracking"),
    ("data",),
    ("model",),
    ("eval",),
    ("train", "report"),
    ("launch",),
    ("cli", "demo"),
]
LAYER = {component: i for i, names in enumerate(LAYERS) for component in names}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def component(module: str) -> str | None:
    """`llava_ablate.data.shards` -> "data", `llava_ablate.config` -> "config"; None for the
    package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(
    module: str, source: str, is_package: bool = False, modules: set[str] | None = None
) -> set[str]:
    """The project modules `source` (the text of `module`) imports, anywhere in the file.

    `from llava_ablate.train import checkpoint` imports the module `llava_ablate.train.checkpoint`
    when that is one of `modules` (None: any name may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            named = {f"{target}.{a.name}" for a in node.names}
            submodules = named if modules is None else named & modules
            found |= submodules or {target}
    return found


def component_edges(sources: dict[str, tuple[str, bool]]) -> dict[tuple[str, str], list[str]]:
    """(importing component, imported component) -> "module -> module" lines, for
    `sources` = {module: (source text, is a package __init__)}."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, (source, is_package) in sources.items():
        here = component(module)
        for target in sorted(imported_modules(module, source, is_package, set(sources))):
            there = component(target)
            if here and there and here != there:
                edges.setdefault((here, there), []).append(f"{module} -> {target}")
    return edges


def module_edges(sources: dict[str, tuple[str, bool]]) -> dict[tuple[str, str], list[str]]:
    """(importing module, imported module) between the modules of `sources`, leaving out a
    package importing its own submodules (a registry that loads its readers lazily)."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, (source, is_package) in sources.items():
        for target in imported_modules(module, source, is_package, set(sources)):
            own_part = is_package and target.startswith(module + ".")
            if target in sources and target != module and not own_part:
                edges[(module, target)] = [f"{module} -> {target}"]
    return edges


def upward_imports(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    return [
        f"{line}  ({a} is layer {LAYER[a]}, {b} is layer {LAYER[b]})"
        for (a, b), lines in sorted(edges.items())
        if a in LAYER and b in LAYER and LAYER[a] < LAYER[b]
        for line in lines
    ]


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Every import loop in `edges`, each once (as the path from its smallest name)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found: set[tuple[str, ...]] = set()

    def walk(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:
                walk([*path, nxt])

    for start in sorted(graph):
        walk([start])
    return [[*loop, loop[0]] for loop in sorted(found)]


def package_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(f): (f.read_text(encoding="utf-8"), f.name == "__init__.py")
        for f in sorted(ROOT.rglob("*.py"))
    }


def test_every_component_has_a_layer():
    unplaced = sorted({c for m in package_sources() if (c := component(m)) and c not in LAYER})
    assert not unplaced, f"give these a layer in tests/test_architecture.py LAYERS: {unplaced}"


def test_imports_only_point_down():
    upward = upward_imports(component_edges(package_sources()))
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_import_cycles_between_packages():
    edges = component_edges(package_sources())
    loops = cycles(edges)
    detail = [" -> ".join(loop) + ": " + "; ".join(edges[(loop[0], loop[1])]) for loop in loops]
    assert not loops, "import cycles between packages:\n" + "\n".join(detail)


def test_no_import_cycles_between_modules():
    loops = cycles(module_edges(package_sources()))
    assert not loops, "import cycles between modules:\n" + "\n".join(" -> ".join(x) for x in loops)


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks above are only as good as the import reading: a lazy `from
    llava_ablate.train ...` in data/, and a relative import closing a loop, are both caught."""
    sources = {
        "llava_ablate.data.shards": (
            "def f():\n    from llava_ablate.train.loop import train_loop\n",
            False,
        ),
        "llava_ablate.train.loop": ("from ..data import shards\n", False),
    }
    edges = component_edges(sources)
    assert upward_imports(edges) == [
        "llava_ablate.data.shards -> llava_ablate.train.loop  (data is layer 2, train is layer 5)"
    ]
    assert cycles(edges) == [["data", "train", "data"]]
    assert edges[("train", "data")] == ["llava_ablate.train.loop -> llava_ablate.data.shards"]
    assert cycles(module_edges(sources)) == [
        ["llava_ablate.data.shards", "llava_ablate.train.loop", "llava_ablate.data.shards"]
    ]


def test_a_module_imported_by_name_from_its_package_is_read_as_that_module():
    found = imported_modules("llava_ablate.train.run", "from llava_ablate.train import checkpoint")
    assert "llava_ablate.train.checkpoint" in found
    assert component_edges({"llava_ablate.eval.x": ("import llava_ablate.launch.grid", False)}) == {
        ("eval", "launch"): ["llava_ablate.eval.x -> llava_ablate.launch.grid"]
    }
