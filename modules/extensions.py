"""The extension loader: `extensions-builtin/*` and `extensions/*`.

An extension is a folder with any of: `preload.py` (command-line flags, see `modules.cmd_args`),
`scripts/*.py` (imported at start; a module-level `setup(webui)` function is called with the WebUI object),
`javascript/*.js` and `style.css` (served to the browser).

Imports: an extension's folder is an import root, but it is not put on `sys.path`. `ExtensionImports` (a finder
appended to `sys.meta_path`) offers exactly the top-level names the folder holds: each `*.py` module beside
`preload.py` (which is loaded by path, see `modules.cmd_args`) and each package (a folder with `__init__.py`).
So `import networks` works in any script as it does in A1111, while
* a name is offered by one folder only (the first extension to offer it; a later one is logged and not offered);
* the finder comes after `sys.path`, so an extension's module never shadows the standard library, an installed
  package or the host's `modules`, and nothing but those names resolves through extension folders;
* submodules are found through their package (`lorakit.engine` from `lorakit.__path__`), as for any package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from modules.cmd_args import extension_dirs

if TYPE_CHECKING:
    from modules.host import WebUI

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


class ExtensionImports(importlib.abc.MetaPathFinder):
    """The top-level module and package names that extension folders offer to `import` (see the module docstring)."""

    def __init__(self) -> None:
        self.names: dict[str, Path] = {}  # top-level name -> the folder that offers it

    def offer(self, folder: Path) -> list[str]:
        """Offer `folder`'s top-level modules and packages; returns the names it now offers. Installs the finder."""
        if self not in sys.meta_path:
            sys.meta_path.append(self)
        offered = []
        for name in self.top_level_names(folder):
            owner = self.names.setdefault(name, folder)
            if owner == folder:
                offered.append(name)
            else:
                log.warning("extension %s: module %r is already offered by %s; not offered again", folder.name, name,
                            owner)
        return offered

    @staticmethod
    def top_level_names(folder: Path) -> list[str]:
        """`*.py` modules (but `preload.py`) and packages (folders with `__init__.py`) directly in `folder`."""
        names = [path.stem for path in folder.glob("*.py") if path.stem != "preload"]
        names += [path.name for path in folder.iterdir() if (path / "__init__.py").is_file()] if folder.is_dir() else []
        return sorted(name for name in names if name.isidentifier())

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        """A spec for an offered top-level name; None for everything else (submodules come through their package)."""
        folder = self.names.get(fullname) if path is None else None
        if folder is None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [str(folder)])


EXTENSION_IMPORTS = ExtensionImports()


def _import_script(path: Path, ext_name: str) -> ModuleType:
    module_name = f"ext_{ext_name}_{path.stem}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_extensions(webui: WebUI, include_user: bool = True) -> list[Extension]:
    """Import every extension's scripts and call their `setup(webui)`. A failing extension is logged and skipped."""
    loaded: list[Extension] = []
    for folder in extension_dirs(include_user=include_user):
        ext = Extension(name=folder.name, path=folder, builtin=folder.parent.name == "extensions-builtin")
        EXTENSION_IMPORTS.offer(folder)
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
