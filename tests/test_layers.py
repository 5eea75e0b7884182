"""The layout is the architecture: ``common`` imports neither end, the ends import neither each other nor ``apps``.

fedsqueeze is one package spread over four folders (``common`` is ``fedsqueeze``,
``server``, ``client`` and ``apps`` its subpackages, see pyproject's
``package-dir``). import-linter builds its graph by walking the one folder
a package's ``__init__`` sits in, so it cannot see this layout; these tests
check the same contract two ways: every import statement in the source, and
what importing every module really loads (which also catches imports made by
name at import time).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"common": "fedsqueeze", "server": "fedsqueeze.server", "client": "fedsqueeze.client",
           "apps": "fedsqueeze.apps"}
FORBIDDEN = {
    "common": ("fedsqueeze.server", "fedsqueeze.client", "fedsqueeze.apps"),
    "server": ("fedsqueeze.client", "fedsqueeze.apps"),
    "client": ("fedsqueeze.server", "fedsqueeze.apps"),
}


def _module_name(folder: str, path: Path) -> str:
    parts = path.relative_to(ROOT / folder).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((FOLDERS[folder], *parts))


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "v1" not in p.relative_to(ROOT / folder).parts)


def imported_modules(module: str, path: Path) -> set[str]:
    """Every module an import statement in ``path`` (module ``module``) names, relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join([*base, node.module] if node.module else base)
            names.add(stem)
            names.update(f"{stem}.{alias.name}" for alias in node.names)
    return names


def _offends(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_statement_crosses_a_layer(folder: str) -> None:
    crossings = [f"{p.relative_to(ROOT)} imports {name}" for p in _sources(folder)
                 for name in sorted(imported_modules(_module_name(folder, p), p)) if _offends(name, FORBIDDEN[folder])]
    assert not crossings, "\n".join(crossings)


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    """The statement check is not vacuous: absolute, relative and from-package imports of an end are all caught."""
    source = tmp_path / "sneaky.py"
    source.write_text("import os\nfrom ..server import coordinator\nfrom fedsqueeze import client\n"
                      "def later():\n    import fedsqueeze.apps.cli\n")
    found = imported_modules("fedsqueeze.codecs.sneaky", source)
    assert {"fedsqueeze.server.coordinator", "fedsqueeze.client", "fedsqueeze.apps.cli"} <= found
    assert [n for n in sorted(found) if _offends(n, FORBIDDEN["common"])] == [
        "fedsqueeze.apps.cli", "fedsqueeze.client", "fedsqueeze.server", "fedsqueeze.server.coordinator"]


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_importing_a_layer_loads_nothing_above_it(folder: str) -> None:
    modules = [_module_name(folder, p) for p in _sources(folder) if p.name != "__main__.py"]
    probe = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
             f"print('\\n'.join(sorted(m for m in sys.modules if m.startswith({FORBIDDEN[folder]!r}))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {folder} loaded:\n{result.stdout}"
