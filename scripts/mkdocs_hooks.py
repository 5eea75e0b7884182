"""MkDocs hook: stage the package's source as one tree, so mkdocstrings reads every subpackage's docstrings.

The ``fedsqueeze`` package is spread over four folders (``common`` is
``fedsqueeze``; ``server``, ``client`` and ``apps`` its subpackages, see
pyproject's ``package-dir``); griffe finds a package's subpackages only inside
its own folder. Before each build (first of all ``on_config`` hooks) this writes ``build/api-src/fedsqueeze``: a
folder of symbolic links to ``common``'s entries and to the three subpackages,
which mkdocs.yml gives the Python handler as its search path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "api-src" / "fedsqueeze"
SUBPACKAGES = ("server", "client", "apps")


@event_priority(100)   # before mkdocstrings' on_config, which drops search paths that do not exist yet
def on_config(config: Any, **_: Any) -> Any:
    if STAGE.exists():
        shutil.rmtree(STAGE)
    STAGE.mkdir(parents=True)
    for entry in (ROOT / "common").iterdir():
        if entry.name != "__pycache__":
            (STAGE / entry.name).symlink_to(entry)
    for name in SUBPACKAGES:
        (STAGE / name).symlink_to(ROOT / name)
    return config
