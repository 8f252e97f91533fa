"""The installed package stands alone: it never reaches into the checkout, and its test doubles stay apart."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import mushroom

SRC = Path(mushroom.__file__).resolve().parent
CHECKOUT = Path(__file__).resolve().parents[1]
CHECKOUT_PACKAGES = {"pipelines", "components", "tests", "benchmarks"}


def _modules(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(tree: ast.AST) -> set[str]:
    """Absolute module names an AST imports (``from a import b`` counts as ``a`` and ``a.b``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_checkout_nor_edits_the_import_path():
    for path in _modules(SRC):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        reached = {name.split(".")[0] for name in _imports(tree)} & CHECKOUT_PACKAGES
        assert not reached, f"{path} imports {reached}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert not (isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr == "path"), (
                    f"{path}:{node.lineno} touches sys.path")
                assert node.attr != "import_module", f"{path}:{node.lineno} imports a module by name"
            assert not (isinstance(node, ast.Name) and node.id == "__import__"), f"{path}:{node.lineno}"


def test_only_the_library_is_packaged():
    find = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert find["where"] == ["src"]
    assert sorted(p.name for p in (CHECKOUT / "src").iterdir() if (p / "__init__.py").is_file()) == ["mushroom"]


def test_mushroom_testing_is_imported_by_nothing_else_in_the_library():
    for path in _modules(SRC):
        if path.is_relative_to(SRC / "testing"):
            continue
        used = {n for n in _imports(ast.parse(path.read_text(encoding="utf-8")))
                if n == "mushroom.testing" or n.startswith("mushroom.testing.")}
        assert not used, f"{path} imports {used}"


def test_the_fake_inaturalist_server_imports_only_the_standard_library_and_pillow():
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import mushroom.testing.inat_server\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "extra = sorted(new - set(sys.stdlib_module_names) - {'mushroom', 'PIL'})\n"
        "assert not extra, extra\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
