"""Dependencies point one way: each package imports only packages of lower layers (docs/architecture.md)."""

import ast
from pathlib import Path

import meddiff

PACKAGE = Path(meddiff.__file__).parent

# Lowest first. Modules of the base layer may use each other; elsewhere, packages of one layer are
# independent of each other. Everything may read meddiff.__version__.
LAYERS = [
    {"errors", "files", "devices", "progress", "config", "migrations", "checkpoint", "runlock", "rundir"},
    {"data", "nets"},
    {"text", "diffusion"},
    {"metrics", "report"},
    {"segment", "fusion", "train"},
    {"tasks"},
    {"edit"},
    {"api"},
    {"cli"},
]
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(path: Path, root: Path = PACKAGE) -> str:
    return path.relative_to(root).parts[0].removesuffix(".py")


def _imported(tree: ast.AST) -> set[str]:
    """The top-level meddiff packages a module imports (anywhere in it, lazy imports included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "meddiff":
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from meddiff import X: a package, or the version
                found |= {a.name for a in node.names if a.name in LAYER_OF}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("meddiff.")}
    return found


def _violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        source = _top(path, root)
        if source == "__init__":
            continue
        for target in _imported(ast.parse(path.read_text())) - {source}:
            low, high = LAYER_OF[target], LAYER_OF[source]
            if low > high or (low == high and low != 0):
                problems.append(f"{path.relative_to(root)} imports meddiff.{target}")
    return problems


def test_every_package_has_a_layer():
    packages = {_top(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert packages == set(LAYER_OF)


def test_imports_point_only_to_lower_layers():
    assert _violations() == []


def test_the_check_catches_upward_and_sideways_imports(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "writers.py").write_text("from meddiff.report.grids import save_png\n")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "x.py").write_text("def f():\n    import meddiff.diffusion.sampling\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "y.py").write_text(
        "from meddiff import __version__, files\nfrom meddiff.train import engine\n"
    )
    assert _violations(tmp_path) == ["data/writers.py imports meddiff.report", "text/x.py imports meddiff.diffusion"]
