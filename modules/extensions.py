"""The extension loader: `extensions-builtin/*` and `extensions/*`.

An extension is a folder with any of: `preload.py` (command-line flags, see `modules.cmd_args`),
`scripts/*.py` (imported at start; a module-level `setup(webui)` function is called with the WebUI object),
`javascript/*.js` and `style.css` (served to the browser). The extension folder is put on `sys.path` so its
scripts can import its modules by plain name, as A1111 extensions do.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modules.cmd_args import extension_dirs

log = logging.getLogger(__name__)


@dataclass
class Extension:
    """One extension folder and what it contributed."""

    name: str
    path: Path
    builtin: bool
    scripts: list[ModuleType] = field(default_factory=list)
    error: str | None = None

    @property
    def javascript_files(self) -> list[Path]:
        folder = self.path / "javascript"
        return sorted(folder.glob("*.js")) if folder.is_dir() else []

    @property
    def stylesheet(self) -> Path | None:
        css = self.path / "style.css"
        return css if css.is_file() else None


def _import_script(path: Path, ext_name: str) -> ModuleType:
    module_name = f"ext_{ext_name}_{path.stem}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_extensions(webui: Any, include_user: bool = True) -> list[Extension]:
    """Import every extension's scripts and call their `setup(webui)`. A failing extension is logged and skipped."""
    loaded: list[Extension] = []
    for folder in extension_dirs(include_user=include_user):
        ext = Extension(name=folder.name, path=folder, builtin=folder.parent.name == "extensions-builtin")
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
        scripts_dir = folder / "scripts"
        try:
            for script in sorted(scripts_dir.glob("*.py")) if scripts_dir.is_dir() else []:
                module = _import_script(script, ext.name)
                ext.scripts.append(module)
                if hasattr(module, "setup"):
                    module.setup(webui)
        except Exception as exc:
            log.exception("extension %s failed to load", ext.name)
            ext.error = f"{type(exc).__name__}: {exc}"
        loaded.append(ext)
    return loaded
