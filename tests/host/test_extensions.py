"""Extension folders as import roots: each offers exactly its top-level modules and packages, after `sys.path`, and
a name is offered by one folder only (so a user extension's `network.py` cannot shadow the Lora extension's)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from modules.extensions import ExtensionImports


@pytest.fixture
def finder(tmp_path: Path):
    """A finder of its own (not the WebUI's); afterwards it is uninstalled and the modules it loaded from the test's
    folders are forgotten (only those: `json` must stay the standard library's)."""
    imports = ExtensionImports()
    yield imports
    if imports in sys.meta_path:
        sys.meta_path.remove(imports)
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(tmp_path)):
            del sys.modules[name]


def make_extension(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    for relative, text in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def test_an_extension_offers_its_modules_and_packages_but_not_preload(tmp_path: Path, finder: ExtensionImports):
    folder = make_extension(tmp_path, "first", {"zz_first_mod.py": "WHO = 'first'\n", "preload.py": "",
                                                "zz_first_pkg/__init__.py": "", "zz_first_pkg/inner.py": "X = 1\n",
                                                "scripts/zz_first_script.py": ""})
    assert finder.offer(folder) == ["zz_first_mod", "zz_first_pkg"]
    assert importlib.import_module("zz_first_mod").WHO == "first"
    assert importlib.import_module("zz_first_pkg.inner").X == 1  # submodules come through the package
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("zz_first_script")
    assert str(folder) not in sys.path


def test_a_second_extension_cannot_shadow_a_name_or_the_standard_library(tmp_path: Path, finder: ExtensionImports):
    first = make_extension(tmp_path, "first", {"zz_shared_name.py": "WHO = 'first'\n"})
    second = make_extension(tmp_path, "second", {"zz_shared_name.py": "WHO = 'second'\n", "json.py": "WHO = 'x'\n"})
    finder.offer(first)
    assert finder.offer(second) == ["json"]  # zz_shared_name stays the first extension's
    assert importlib.import_module("zz_shared_name").WHO == "first"
    assert not hasattr(importlib.import_module("json"), "WHO")  # sys.path (the standard library) comes first
