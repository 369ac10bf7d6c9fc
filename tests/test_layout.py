"""The package's layout rules (docs/design.md §1), read from the source: the core imports neither
world, the paper's modules never import ``ssm_gd.seq``, and ``ssm_gd.seq`` imports only the core."""

import ast
import pathlib

import pytest

import ssm_gd

PACKAGE = pathlib.Path(ssm_gd.__file__).parent
CORE = {"validate", "initializers", "sampling", "scan", "readout", "recurrence", "optim", "flags",
        "trainer", "checkpoints", "plots", "distributed"}  # fmt: skip
PAPER = {"tokens", "tasks", "gd", "layers", "construction", "neighbours", "metrics", "config",
         "regression", "classify", "train"}  # fmt: skip
# The old paths of the moved sequence modules: aliases of ssm_gd.seq.*, kept for one release.
MOVED = {"gril", "listops", "text", "models"}


def _world(module: str) -> str:
    """``"core"``, ``"paper"``, ``"seq"`` or ``"moved"`` for a dotted name under ``ssm_gd``."""
    parts = module.split(".")
    if parts[1] == "seq":
        return "seq"
    name = parts[1]
    for world, names in (("core", CORE), ("paper", PAPER), ("moved", MOVED)):
        if name in names:
            return world
    raise AssertionError(f"{module} belongs to no world: add it to tests/test_layout.py")


def _imports(path: pathlib.Path) -> set[str]:
    """The ``ssm_gd`` modules a file imports (``from ssm_gd import a`` counts as ``ssm_gd.a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("ssm_gd.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ssm_gd"):
            if node.module in ("ssm_gd", "ssm_gd.seq"):
                found |= {f"{node.module}.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        if relative.name == "__init__":
            name = name.rsplit(".", 1)[0]
        if name not in ("ssm_gd", "ssm_gd.seq"):
            yield name, path


ALLOWED = {"core": {"core"}, "paper": {"core", "paper"}, "seq": {"core", "seq"},
           "moved": {"seq"}}  # fmt: skip


@pytest.mark.parametrize("name,path", list(_modules()), ids=lambda v: str(v))
def test_imports_go_one_way(name, path):
    world = _world(name)
    crossing = {m for m in _imports(path) if _world(m) not in ALLOWED[world]}
    assert not crossing, f"{name} ({world}) imports {sorted(crossing)}"


def test_every_module_belongs_to_a_world():
    names = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir()
                                                      if (p / "__init__.py").exists()}  # fmt: skip
    assert names - {"__init__", "seq"} == CORE | PAPER | MOVED
