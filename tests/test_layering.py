"""The package's shape: no import cycles between its packages, Comet only under tracking/, no
test tooling in the library, one home for the helpers several packages share."""

import ast
from pathlib import Path

import networkx as nx
import pytest

from tests.runs import REPO

PETLAB = REPO / "petlab"


def imports(path: Path) -> list[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif isinstance(node, ast.ImportFrom):  # relative: resolve against the file's package
            base = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
            names.append(f"{base}.{node.module}" if node.module else base)
    return names


def package_of(module: str) -> str:
    """petlab.engine.trainer -> petlab.engine; petlab.config -> petlab.config (a top-level module is its own unit)."""
    return ".".join(module.split(".")[:2])


def package_graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PETLAB.rglob("*.py"):
        here = package_of(".".join(path.relative_to(REPO).with_suffix("").parts))
        graph.add_node(here)
        for name in imports(path):
            there = package_of(name)
            if name.startswith("petlab.") and there != here:
                graph.add_edge(here, there, example=f"{path.relative_to(REPO)} imports {name}")
    return graph


def test_no_import_cycle_between_petlabs_packages():
    graph = package_graph()
    assert graph.number_of_edges() > 20  # the walk found the real imports
    cycles = list(nx.simple_cycles(graph))
    explained = [" -> ".join(c + [c[0]]) + ": " + "; ".join(graph.edges[a, b]["example"]
                                                           for a, b in zip(c, c[1:] + c[:1])) for c in cycles]
    assert not cycles, "\n".join(explained)
    # the bottom of the stack imports nothing of petlab
    for bottom in ("petlab.errors", "petlab.names", "petlab.paths", "petlab.fileio", "petlab.calibration"):
        assert not list(graph.successors(bottom)), bottom


def test_the_cycle_check_would_see_a_cycle(tmp_path):
    """The walk is not vacuous: a lazy import inside a function is an edge like any other."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from petlab.engine.trainer import Trainer\n")
    assert "petlab.engine.trainer" in imports(module)


def test_comet_ml_is_imported_only_under_tracking():
    offenders = [str(p.relative_to(REPO)) for p in PETLAB.rglob("*.py")
                 if "comet_ml" in {n.split(".")[0] for n in imports(p)} and "tracking" not in p.parts]
    assert not offenders
    assert any("comet_ml" in imports(p) for p in (PETLAB / "tracking").rglob("*.py"))


@pytest.mark.slow
def test_the_library_launches_no_processes_for_tests():
    """Ports, Popen and health polling are test tooling: they live in tests/servers.py."""
    for path in PETLAB.rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert "demo_process" not in names, path
        assert "Popen" not in path.read_text(), path


def test_shared_helpers_have_one_home():
    """One atomic write, one file lock, one project root: no hand-rolled copies elsewhere."""
    for path in PETLAB.rglob("*.py"):
        text, where = path.read_text(), path.relative_to(REPO)
        if path.name != "fileio.py":
            assert "fcntl" not in text and "mkstemp" not in text and ".tmp" not in text, where
        if path.name != "paths.py":
            assert "parents[" not in text, where


def test_the_serving_path_imports_no_torch():
    """The Space installs no torch: nothing under petlab/inference imports it or petlab's training side, even
    lazily, and the server's modules import it only inside the fallbacks for what ONNX Runtime cannot serve."""
    for path in (PETLAB / "inference").rglob("*.py"):
        for name in imports(path):
            assert name.split(".")[0] not in ("torch", "torchvision"), f"{path.name} imports {name}"
            assert package_of(name) not in ("petlab.engine", "petlab.models", "petlab.export", "petlab.registry",
                                            "petlab.data"), f"{path.name} imports {name}"


@pytest.mark.slow  # a fresh Python: this one has torch loaded already
def test_importing_the_server_loads_no_torch():
    import subprocess
    import sys

    loaded = subprocess.run([sys.executable, "-c", "import sys, petlab.serving, petlab.public_server, "
                             "petlab.registry.card; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                             "('torch', 'torchvision', 'comet_ml', 'optuna')))"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert loaded.stdout.strip() == "[]"
