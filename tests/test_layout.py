"""The library's shape: `elmrec/` never imports Prefect or the pipeline; MLflow only through elmrec.tracking and
elmrec.registry (the logged model)."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "elmrec"
APP = PACKAGE / "app"  # the command line and the local server: the one part that drives Prefect


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a source file imports (at any depth of the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def library_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if APP not in p.parents)


def test_the_library_never_imports_prefect_or_the_pipeline_folders() -> None:
    offenders = {str(p.relative_to(PACKAGE)): sorted(imported_modules(p) & {"prefect", "flows", "tasks"})
                 for p in library_files()}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_only_tracking_and_the_model_registry_import_mlflow() -> None:
    users = sorted(str(p.relative_to(PACKAGE)) for p in library_files() if "mlflow" in imported_modules(p))
    assert users == ["registry.py", "tracking.py"]


def test_importing_every_library_module_loads_no_prefect() -> None:
    modules = [".".join(("elmrec", *p.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
               for p in library_files()]
    code = ("import importlib, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows', 'tasks')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "[]"


def test_the_checkout_folders_are_not_installed_as_top_level_packages(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('tasks'), "
                           "u.find_spec('flows'))"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "None None"


def test_the_model_loads_without_polars() -> None:
    """LightGCN's maths (elmrec.propagation) and the prompt type live apart from the data stages."""
    code = "import sys, elmrec.model; print('polars' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert done.stdout.strip() == "False"
