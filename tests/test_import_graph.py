"""The package dependency order of docs/INTERFACES.md ("Layout"), checked on the source.

Every import statement (module level and inside functions) of the four
packages and scripts/ is read with `ast`; an import from one unit to another
is an edge. The test fails on an edge the order does not allow (an upward
edge) and on any cycle, and checks that the light modules stay light.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Unit -> the units it may import (docs/INTERFACES.md "Layout"). Lowest first.
ALLOWED = {
    "store": set(),
    "trainer.model": set(),
    "trainer.flops": {"trainer.model"},
    "teacher_dump": {"store", "trainer.model"},
    "trainer.training": {"store", "trainer.model", "trainer.flops"},
    "trainer.configs": {"trainer.model", "trainer.flops", "trainer.training"},
    "trainer.evaluate": {"store", "trainer.model", "trainer.training"},
    "trainer.report": {"trainer.training"},
    # The TPU planner compiles both the trainer's step and the dump's extraction step.
    "trainer.plan": {"store", "trainer.model", "trainer.flops", "trainer.training", "teacher_dump"},
    # trainer/__init__.py, trainer/__main__.py and any other top-level trainer/
    # module (an entry point): above every trainer subpackage.
    "trainer": {
        "store",
        "trainer.model",
        "trainer.flops",
        "trainer.training",
        "trainer.configs",
        "trainer.evaluate",
        "trainer.report",
        "trainer.plan",
    },
    "pipelines": {"store", "trainer.model", "teacher_dump"},
    "scripts": {
        "store",
        "trainer",
        "trainer.model",
        "trainer.flops",
        "trainer.training",
        "trainer.configs",
        "trainer.evaluate",
        "trainer.report",
        "trainer.plan",
        "teacher_dump",
        "pipelines",
    },
}
PACKAGES = ("store", "trainer", "teacher_dump", "pipelines", "scripts")

# Third-party imports a unit must never make, even inside a function.
FORBIDDEN = {
    "store": {"jax", "jaxlib", "flax", "optax", "orbax", "apache_beam", "sentencepiece"},
    "teacher_dump": {"apache_beam"},
    "trainer.model": {"apache_beam"},
    "trainer.training": {"apache_beam"},
    "trainer.evaluate": {"apache_beam"},
}


def _modules(root=ROOT):
    """{dotted module name: path} of every .py file in PACKAGES."""
    found = {}
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, package)):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in filenames:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3]
                    name = rel.replace(os.sep, ".")
                    found[name[: -len(".__init__")] if name.endswith(".__init__") else name] = (
                        os.path.join(dirpath, f)
                    )
    return found


def unit_of(module):
    """The unit (a key of ALLOWED) a dotted module belongs to, or None (third party)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in ALLOWED:
            return prefix
    return None


def _imports(path, module, modules, top_level_only=False):
    """Dotted names a module imports (a `from X import y` names X.y when that is a module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_package = path.endswith("__init__.py")
    nodes = tree.body if top_level_only else ast.walk(tree)
    if top_level_only:  # statements under top-level if/try still run at import
        nodes = [
            n
            for stmt in tree.body
            for n in ast.walk(stmt)
            if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
    names = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                package = package[: len(package) - node.level + (1 if is_package else 0)]
                base = ".".join(package + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                names.append(full if full in modules else base)
    return names


def import_graph(root=ROOT):
    """({(unit_a, unit_b): [module importing, ...]}, {unit: {third-party top names}})."""
    modules = _modules(root)
    edges, third_party = {}, {}
    for module, path in modules.items():
        src = unit_of(module)
        for name in _imports(path, module, modules):
            dst = unit_of(name)
            if dst is None:
                third_party.setdefault(src, set()).add(name.split(".")[0])
            elif dst != src:
                edges.setdefault((src, dst), []).append(module)
    return edges, third_party


def find_cycle(edges):
    """One cycle of the unit graph as a list of units, or None."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_every_module_belongs_to_a_unit():
    assert all(unit_of(m) for m in _modules())


def test_no_upward_edge():
    edges, _ = import_graph()
    upward = [
        f"{a} -> {b} (in {', '.join(sorted(set(mods)))})"
        for (a, b), mods in sorted(edges.items())
        if b not in ALLOWED[a]
    ]
    assert not upward, "imports against docs/INTERFACES.md's order:\n" + "\n".join(upward)


def test_no_cycle():
    edges, _ = import_graph()
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges))}"


def test_allowed_order_itself_has_no_cycle():
    assert find_cycle({(a, b): [] for a, bs in ALLOWED.items() for b in bs}) is None


def test_forbidden_third_party_imports():
    _, third_party = import_graph()
    bad = {
        unit: sorted(third_party.get(unit, set()) & names)
        for unit, names in FORBIDDEN.items()
        if third_party.get(unit, set()) & names
    }
    assert not bad, f"forbidden imports: {bad}"


@pytest.mark.parametrize(
    "module",
    [
        "pipelines.plan",
        "trainer.model.layout",
        "trainer.model.tokenizer",
        "trainer.model.model_config",
        "trainer.model.errors",
        "trainer.training.loss_options",
        "trainer.training.config",
        "trainer.report",
        "trainer.sweep",
    ],
)
def test_light_modules_do_not_import_jax_at_import_time(module):
    # What `import module` loads: the closure of module-level imports.
    modules = _modules()
    seen, todo, third = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # Importing a.b.c runs a/__init__, a/b/__init__ first.
        todo.extend(
            ".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n]) in modules
        )
        if name not in modules:
            third.add(parts[0])
            continue
        todo.extend(_imports(modules[name], name, modules, top_level_only=True))
    assert not third & {"jax", "jaxlib", "flax", "orbax", "optax"}, sorted(third)


def test_the_checker_sees_an_upward_edge(tmp_path):
    # A fake tree where trainer.model imports pipelines: the graph must show it.
    for rel, text in {
        "trainer/__init__.py": "",
        "trainer/model/__init__.py": "",
        "trainer/model/gemma3.py": "def f():\n    from pipelines import dump\n",
        "pipelines/__init__.py": "",
        "pipelines/dump.py": "import trainer.model\n",
        "store/__init__.py": "",
        "teacher_dump/__init__.py": "",
        "scripts/__init__.py": "",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    edges, _ = import_graph(str(tmp_path))
    assert ("trainer.model", "pipelines") in edges and "pipelines" not in ALLOWED["trainer.model"]
    assert find_cycle(edges) in (
        ["pipelines", "trainer.model", "pipelines"],
        ["trainer.model", "pipelines", "trainer.model"],
    )
