"""The import graph runs one way and the wheel holds every package (docs/DESIGN.md's layout table).

ct_reference <- export <- cli/benchmarks, runtime <- export, serving; runtime and serving never
import torch (nor onnxslim, an export-time tool); compressive_rt.errors and compressive_rt.progress
are the modules every layer may import. Read from the source with `ast`, so an import inside a
function counts as much as one at the top of a file.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "compressive_rt"
LAYERS = ("ct_reference", "export", "runtime", "serving", "cli", "benchmarks")
SHARED = {"errors", "progress"}  # compressive_rt.<name> modules every layer may import
FORBIDDEN = {
    "runtime": {"ct_reference", "export", "serving", "cli", "benchmarks", "torch", "onnxslim"},
    "serving": {"ct_reference", "export", "cli", "benchmarks", "torch", "onnxslim"},
    "ct_reference": {"export", "runtime", "serving", "cli", "benchmarks"},
    "export": {"serving", "cli", "benchmarks"},
}
SKIPPED_FOLDERS = {"build", "tests"}  # besides hidden folders (.venv, .git)


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name the file imports, at any depth (functions included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; import from {NAMESPACE}.<layer>"
            if node.module == NAMESPACE:
                modules.update(f"{NAMESPACE}.{alias.name}" for alias in node.names)
            else:
                modules.add(node.module)
    return modules


def imported_parts(path: Path) -> set[str]:
    """What a file reaches: a layer or shared module of the namespace, or a top-level package.
    A bare `runtime`, `export`, ... counts as that layer (and would not import when installed)."""
    parts = set()
    for module in imported_modules(path):
        names = module.split(".")
        parts.add(names[1] if names[0] == NAMESPACE and len(names) > 1 else names[0])
    return parts


def layer_files(layer: str) -> list[Path]:
    files = sorted((ROOT / layer).rglob("*.py"))
    assert files, f"no modules found in {layer}/"
    return files


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    reached = {str(path.relative_to(ROOT)): sorted(imported_parts(path) & FORBIDDEN[layer])
               for path in layer_files(layer)}
    assert {name: parts for name, parts in reached.items() if parts} == {}


@pytest.mark.parametrize("layer", LAYERS)
def test_only_the_error_root_is_shared_outside_the_layers(layer):
    namespace_modules = {module.split(".")[1] for path in layer_files(layer)
                         for module in imported_modules(path)
                         if module.startswith(f"{NAMESPACE}.")}
    assert namespace_modules - set(LAYERS) - SHARED == set()


def test_the_error_root_imports_nothing_from_the_project():
    parts = imported_parts(ROOT / NAMESPACE / "errors.py")
    assert parts & (set(LAYERS) | {NAMESPACE}) == set()


def test_library_code_never_imports_the_cli():
    violations = [str(path.relative_to(ROOT)) for layer in LAYERS if layer != "cli"
                  for path in layer_files(layer) if "cli" in imported_parts(path)]
    assert violations == []


def test_pyproject_packages_are_exactly_the_folders_with_an_init():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {init.parent.relative_to(ROOT).as_posix()
               for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")
               and top.name not in SKIPPED_FOLDERS for init in top.rglob("__init__.py")}
    expected = {folder if folder == NAMESPACE else f"{NAMESPACE}.{folder.replace('/', '.')}"
                for folder in folders}
    assert set(setuptools["packages"]) == expected
    assert setuptools["package-dir"] == {f"{NAMESPACE}.{folder.replace('/', '.')}": folder
                      for folder in folders if folder != NAMESPACE}


def test_the_launchers_start_and_bind_and_reach_no_benchmark():
    """benchmarks/launchers/ (what the tests and the benchmarks start or bind) imports no
    benchmark: only its own modules and benchmarks.settings (BenchError)."""
    allowed = {f"{NAMESPACE}.benchmarks.settings"}
    reached = {str(path.relative_to(ROOT)): sorted(
        module for module in imported_modules(path)
        if module.startswith(f"{NAMESPACE}.benchmarks") and module not in allowed
        and not module.startswith(f"{NAMESPACE}.benchmarks.launchers"))
        for path in layer_files("benchmarks/launchers")}
    assert {name: modules for name, modules in reached.items() if modules} == {}


def test_tests_hold_their_support_in_the_support_package():
    """tests/ holds conftest.py and test files; what tests import is in tests/support/."""
    others = sorted(path.name for path in (ROOT / "tests").glob("*.py")
                    if path.name != "conftest.py" and not path.name.startswith("test_"))
    assert others == []
