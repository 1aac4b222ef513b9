"""The Script API (A1111's notion): optional processing steps, shown in the generation tabs and callable by the API.

A script is a class derived from `Script` in a `scripts/*.py` file, at the repository's top level or in an
extension's `scripts/` folder (the extension loader imports those files; a module-level `setup(webui)` is still
called as before, and a file may hold both). Per tab (txt2img / img2img) a `ScriptRunner` holds one instance of each
script whose `show(is_img2img)` is not False:
* selectable scripts (`show` -> True) are listed in the tab's Script dropdown; the chosen one's `run(p, *args)` replaces
  the plain generation (it returns a `Processed`, usually from calling `process_images` itself, e.g. once per grid
  cell); `run` returning None means "generate as usual";
* always-on scripts (`show` -> `AlwaysVisible`) take part in every generation through the hooks `process(p, *args)`,
  `before_process_batch(p, *args, batch_number, prompts, seeds, subseeds)`, `process_batch(p, *args, ...)` (after the
  batch's extra networks are active), `postprocess_image(p, pp, *args)` (may replace `pp.image`) and
  `postprocess(p, processed, *args)`.
A script's arguments are the values of the components its `ui(is_img2img)` returns, in that order: the UI sends them
positionally, and so does the API (`script_name` + `script_args`; `alwayson_scripts: {name: {"args": [...]}}`), with
missing trailing values taken from the components' defaults. Names are the lower-cased titles (A1111's rule).

One request's choice is a `ScriptRun` (the processing object's `scripts` field): hooks that raise are logged and
reported in the generation's comments and do not stop it. The img2img tab plugs in with `webui.scripts.img2img`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


class _AlwaysVisible:
    """The value `Script.show` returns for an always-on script (A1111's `scripts.AlwaysVisible`)."""

    def __repr__(self) -> str:
        return "AlwaysVisible"


AlwaysVisible = _AlwaysVisible()


class ScriptNotFoundError(LookupError):
    """A request named a script that the tab does not have; the message names it and lists the available ones."""


@dataclass
class PostprocessImageArgs:
    """What `Script.postprocess_image` gets: the image, which the script may replace."""

    image: Image.Image


class Script:
    """Base class of a script (see the module docstring). Subclasses define `title()` and usually `ui` and `run`."""

    alwayson: bool = False
    is_txt2img: bool = False
    is_img2img: bool = False
    webui: Any = None  # the WebUI object, set when the runner makes the instance
    filename: str = ""

    def title(self) -> str:
        """The name shown in the Script dropdown; its lower-cased form is the API's `script_name`."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The API name: the lower-cased title."""
        return self.title().lower()

    def show(self, is_img2img: bool) -> bool | _AlwaysVisible:
        """True: listed in the tab's Script dropdown; `AlwaysVisible`: always on; False: not in this tab."""
        return True

    def ui(self, is_img2img: bool) -> list[Any]:
        """Build the script's Gradio components (inside the tab's Blocks) and return those whose values are the
        script's arguments, in order."""
        return []

    def run(self, p: Any, *args: Any) -> Any:
        """Run the generation for a selectable script; return a `Processed` (or None to generate as usual)."""
        return None

    def process(self, p: Any, *args: Any) -> None:
        """Always-on hook: once per request, after prompts and seeds are set, before anything is generated."""

    def before_process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Always-on hook: before each batch (kwargs: batch_number, prompts, seeds, subseeds)."""

    def process_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        """Always-on hook: each batch, after its extra networks are active, before sampling (same kwargs)."""

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs, *args: Any) -> None:
        """Always-on hook: each image after decoding, before its infotext is written and it is saved."""

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        """Always-on hook: once per request, with the result."""

    def elem_id(self, item_id: str) -> str:
        """A DOM id for one of the script's components: `script_<tab>_<title>_<item_id>` (A1111's scheme)."""
        tab = "img2img" if self.is_img2img else "txt2img"
        title = "".join(c if c.isalnum() else "_" for c in self.title().lower()).strip("_")
        return f"script_{tab}_{title}_{item_id}"

    def presets(self, kind: str, value: str) -> dict[int, Any] | None:
        """UI presets (e.g. the Lora card's "compare" action): argument index -> value for a preset of `kind` with
        `value`, or None when the script has no such preset."""
        return None


@dataclass
class ScriptArgInfo:
    """One argument of a script as `GET /sdapi/v1/script-info` describes it (from its UI component)."""

    label: str | None
    value: Any
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[Any] | None = None


def _component_info(component: Any) -> ScriptArgInfo:
    choices = getattr(component, "choices", None)
    if choices is not None:  # Gradio keeps (label, value) pairs
        choices = [c[0] if isinstance(c, (tuple, list)) else c for c in choices]
    return ScriptArgInfo(label=getattr(component, "label", None), value=getattr(component, "value", None),
                         minimum=getattr(component, "minimum", None), maximum=getattr(component, "maximum", None),
                         step=getattr(component, "step", None), choices=choices)


class ScriptRunner:
    """The scripts of one tab (txt2img or img2img): instances, their UI components' defaults, and lookups."""

    def __init__(self, classes: Iterable[type[Script]], is_img2img: bool, webui: Any = None) -> None:
        self.is_img2img = is_img2img
        self.webui = webui
        self.scripts: list[Script] = []
        self.selectable: list[Script] = []
        self.alwayson: list[Script] = []
        self._components: dict[int, list[Any]] = {}  # id(script) -> the components its ui() returned
        for cls in classes:
            try:
                script = cls()
                script.webui = webui
                script.is_img2img, script.is_txt2img = is_img2img, not is_img2img
                visible = script.show(is_img2img)
            except Exception:
                log.exception("script %s failed to start", cls.__qualname__)
                continue
            if visible is False or visible is None:
                continue
            script.alwayson = visible is AlwaysVisible
            (self.alwayson if script.alwayson else self.selectable).append(script)
            self.scripts.append(script)

    @property
    def tabname(self) -> str:
        return "img2img" if self.is_img2img else "txt2img"

    def titles(self) -> list[str]:
        """Titles of the selectable scripts (the Script dropdown's choices after "None")."""
        return [script.title() for script in self.selectable]

    def find_selectable(self, name: str) -> Script:
        """The selectable script called `name` (title or lower-cased title); ScriptNotFoundError otherwise."""
        return self._find(name, self.selectable, "script")

    def find_alwayson(self, name: str) -> Script:
        """The always-on script called `name`; ScriptNotFoundError otherwise."""
        return self._find(name, self.alwayson, "always-on script")

    def _find(self, name: str, scripts: list[Script], kind: str) -> Script:
        wanted = str(name).strip().lower()
        for script in scripts:
            if script.name == wanted:
                return script
        available = ", ".join(repr(s.name) for s in scripts) or "none"
        raise ScriptNotFoundError(f"{kind} {name!r} not found for {self.tabname}; available: {available}")

    # ---- components -----------------------------------------------------------------------------------------

    def build_ui(self, script: Script) -> list[Any]:
        """Call `script.ui(is_img2img)` inside the current Gradio Blocks; remember the components (once per script:
        the first build's components are the ones whose values are the defaults)."""
        components = list(script.ui(self.is_img2img) or [])
        self._components.setdefault(id(script), components)
        return components

    def components(self, script: Script) -> list[Any]:
        """The components of `script`'s UI (built in a throwaway Blocks when no UI has been built yet, e.g. for a
        server that only serves the API)."""
        if id(script) not in self._components:
            import gradio as gr  # noqa: PLC0415 - only scripts with a UI need Gradio

            with gr.Blocks(analytics_enabled=False):
                self.build_ui(script)
        return self._components[id(script)]

    def defaults(self, script: Script) -> list[Any]:
        """The default argument values: the initial values of the script's components."""
        return [getattr(component, "value", None) for component in self.components(script)]

    def arg_infos(self, script: Script) -> list[ScriptArgInfo]:
        """The script's arguments as `GET /sdapi/v1/script-info` lists them."""
        return [_component_info(component) for component in self.components(script)]

    def complete_args(self, script: Script, args: Sequence[Any]) -> list[Any]:
        """`args` with the missing trailing values taken from the defaults (values past the end are refused)."""
        defaults = self.defaults(script)
        if len(args) > len(defaults):
            raise ValueError(f"script {script.name!r} takes {len(defaults)} arguments, got {len(args)}")
        return [*args, *defaults[len(args):]]

    # ---- one request --------------------------------------------------------------------------------------

    def selection(self, script_name: str | None, script_args: Sequence[Any] | None = None,
                  alwayson_scripts: dict[str, Any] | None = None) -> ScriptRun:
        """The scripts of one request: the selected one (None / "" / "None": none) with its positional args, and
        every always-on script with the args `alwayson_scripts[name]["args"]` gives (defaults for the rest).
        Raises ScriptNotFoundError for an unknown name and ValueError for malformed args."""
        selected = None
        if script_name and str(script_name).strip().lower() != "none":
            script = self.find_selectable(script_name)
            selected = ScriptCall(script, self.complete_args(script, list(script_args or [])))
        given: dict[str, list[Any]] = {}
        for name, value in (alwayson_scripts or {}).items():
            script = self.find_alwayson(name)
            if isinstance(value, dict):
                args = value.get("args", [])
            elif isinstance(value, list):
                args = value
            else:
                raise ValueError(f"alwayson_scripts[{name!r}] must be an object with \"args\": [...]")
            if not isinstance(args, list):
                raise ValueError(f"alwayson_scripts[{name!r}].args must be a list")
            given[script.name] = args
        calls = [ScriptCall(script, self.complete_args(script, given.get(script.name, [])))
                 for script in self.alwayson]  # every always-on script runs (defaults when not given)
        return ScriptRun(selected=selected, alwayson=calls)


@dataclass
class ScriptCall:
    """One script with the arguments of one request."""

    script: Script
    args: list[Any] = field(default_factory=list)


@dataclass
class ScriptRun:
    """The scripts taking part in one request (the processing object's `scripts`): see the module docstring."""

    selected: ScriptCall | None = None
    alwayson: list[ScriptCall] = field(default_factory=list)

    def run(self, p: Any, process: Callable[[Any], Any]) -> Any:
        """The selected script's `run` (falling back to `process(p)` when there is none or it returns None)."""
        if self.selected is not None:
            result = self.selected.script.run(p, *self.selected.args)
            if result is not None:
                return result
        return process(p)

    def _each(self, p: Any, hook: str, *before: Any, **kwargs: Any) -> None:
        for call in self.alwayson:
            try:
                getattr(call.script, hook)(p, *before, *call.args, **kwargs)
            except Exception as exc:
                log.exception("script %s: %s failed", call.script.name, hook)
                comments = getattr(p, "comments", None)
                if comments is not None:
                    comments.append(f"script {call.script.name}: {hook} failed: {type(exc).__name__}: {exc}")

    def process(self, p: Any) -> None:
        """Run every always-on script's `process`."""
        self._each(p, "process")

    def before_process_batch(self, p: Any, **kwargs: Any) -> None:
        """Run every always-on script's `before_process_batch`."""
        self._each(p, "before_process_batch", **kwargs)

    def process_batch(self, p: Any, **kwargs: Any) -> None:
        """Run every always-on script's `process_batch`."""
        self._each(p, "process_batch", **kwargs)

    def postprocess_image(self, p: Any, pp: PostprocessImageArgs) -> None:
        """Run every always-on script's `postprocess_image` (each sees the image the previous one left)."""
        self._each(p, "postprocess_image", pp)

    def postprocess(self, p: Any, processed: Any) -> None:
        """Run every always-on script's `postprocess`."""
        self._each(p, "postprocess", processed)


def request_copy(p: Any) -> Any:
    """A copy of a processing object for one more generation of a script (a grid cell, a prompt of a list): the same
    request fields, its own run-time state (prompts, seeds, comments, extra infotext fields) and own copies of the
    mutable request fields, so nothing one generation changes leaks into the next."""
    copy = dataclasses.replace(p)
    copy.override_settings = dict(p.override_settings)
    copy.styles = list(p.styles)
    return copy


def save_grid(webui: Any, p: Any, grid: Image.Image, seed: int | None, infotext: str) -> Path | None:
    """Save a script's grid image (with its infotext) to `outputs/txt2img-grids/DATE/` (or the
    `outdir_txt2img_grids` option's folder) when the request saves grids and the `grid_save` option is on."""
    from modules import images  # noqa: PLC0415 - PIL-heavy, only needed when saving

    if getattr(p, "do_not_save_grid", True) or not webui.options.get("grid_save"):
        return None
    custom = webui.options.get("outdir_txt2img_grids")
    root = Path(custom) if custom else Path(webui.paths.outputs_dir) / "txt2img-grids"
    return images.save_image(grid, images.dated_folder(root), seed=seed, infotext=infotext,
                             pnginfo_enabled=bool(webui.options.get("enable_pnginfo")))


# ---------------------------------------------------------------------------------------------- loading


def script_classes(module: ModuleType) -> list[type[Script]]:
    """The `Script` subclasses a module defines (not ones it imports), in definition order."""
    found = []
    for value in vars(module).values():
        if inspect.isclass(value) and issubclass(value, Script) and value is not Script \
                and value.__module__ == module.__name__:
            found.append(value)
    return found


def import_script_file(path: Path, module_name: str) -> ModuleType:
    """Import one script file under `module_name` (kept in `sys.modules`, as the extension loader does)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


@dataclass
class ScriptRegistry:
    """Every loaded script class, and one `ScriptRunner` per tab (`txt2img`, `img2img`), built on first use."""

    classes: list[type[Script]] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # script file -> why it did not load
    webui: Any = None
    _runners: dict[bool, ScriptRunner] = field(default_factory=dict, repr=False)

    def load_folder(self, folder: Path, prefix: str = "scripts") -> None:
        """Import every `folder/*.py` (a file that fails is logged and recorded in `errors`) and take its classes."""
        for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
            name = f"{prefix}_{path.stem}".replace("-", "_").replace(".", "_")
            try:
                module = import_script_file(path, name)
            except Exception as exc:
                log.exception("script file %s failed to load", path)
                self.errors[str(path)] = f"{type(exc).__name__}: {exc}"
                continue
            self.add_module(module, path)

    def add_module(self, module: ModuleType, path: Path | None = None) -> None:
        """Take the `Script` classes of an imported module (an extension's script file)."""
        for cls in script_classes(module):
            cls.filename = str(path or getattr(module, "__file__", ""))
            self.classes.append(cls)
        self._runners.clear()

    def runner(self, is_img2img: bool) -> ScriptRunner:
        """The tab's runner (made once from the classes loaded so far)."""
        if is_img2img not in self._runners:
            self._runners[is_img2img] = ScriptRunner(self.classes, is_img2img, self.webui)
        return self._runners[is_img2img]

    @property
    def txt2img(self) -> ScriptRunner:
        """The txt2img tab's scripts."""
        return self.runner(False)

    @property
    def img2img(self) -> ScriptRunner:
        """The img2img tab's scripts."""
        return self.runner(True)
