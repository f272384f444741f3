"""The package layout: imports run one way, and lm/ and eval/ see the units stage only through its file format."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "data", "spidr", "units", "lm", "eval", "pipeline")

# Which project packages each package may import. The order is the pipeline's: nothing imports a later stage.
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "spidr": {"common", "data"},
    "units": {"common", "data", "spidr"},
    "lm": {"common", "units"},
    "eval": {"common", "data", "spidr", "units"},
    # The workflow's config check: every stage's torch-free config module, nothing else.
    "pipeline": {"common", "data", "spidr", "units", "lm", "eval"},
}
# lm/ and eval/ read units only through the format (the contract between stages), and the stage configs.
UNITS_MODULES_FOR = {"lm": {"units.format", "units.config"}, "eval": {"units.format", "units.config"}}


def project_imports(path: Path) -> set[str]:
    """Dotted names of the project modules a file imports (absolute imports; the project uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES if (REPO / pkg).is_dir() for p in (REPO / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_imports_run_one_way(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    for name in project_imports(path):
        target = name.split(".")[0]
        if target == package:
            continue
        where = path.relative_to(REPO)
        assert target in ALLOWED[package], f"{where} imports {name}: {package}/ may not import {target}/"
        if target == "units" and package in UNITS_MODULES_FOR:
            assert name in UNITS_MODULES_FOR[package], (
                f"{where} imports {name}: {package}/ reads units only through "
                f"{sorted(UNITS_MODULES_FOR[package])}"
            )


def test_every_module_says_its_role() -> None:
    missing = [str(p.relative_to(REPO)) for p in modules() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a one-line docstring: {missing}"
