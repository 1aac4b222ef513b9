"""The WebUI object: every piece of host state in one place, built from command-line flags.

Tests build one with `WebUI.create(["--data-dir", tmp])`; the server, UI, API and extensions receive it
instead of reaching into module globals.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from modules import cmd_args
from modules.cache import DiskCache
from modules.devices import default_device, default_dtype
from modules.extensions import Extension, load_extensions
from modules.extra_networks import ExtraNetworkRegistry
from modules.options import Options
from modules.paths import REPO_ROOT, Paths
from modules.script_callbacks import Callbacks
from modules.scripts import ScriptRegistry
from modules.sd_vae import VaeManager
from modules.startup_timer import StartupTimer
from modules.state import JobState
from modules.styles import StyleDatabase
from modules.textual_inversion import EmbeddingDatabase
from modules.upscalers import UpscalerRegistry

log = logging.getLogger(__name__)


T = TypeVar("T")


class Services:
    """Objects extensions publish for each other by name, read back with the type the reader expects.

    `webui.services.publish("lora", engine)`; `webui.services.get("lora", LoraEngine)` returns it typed (KeyError
    when nothing is published under the name, TypeError when it is not a `LoraEngine`). `webui.services["lora"]`
    reads it untyped. The host's own shared state has explicit `WebUI` fields instead (e.g. `extra_network_pages`,
    `before_ui_ran`)."""

    def __init__(self) -> None:
        self._items: dict[str, object] = {}

    def publish(self, name: str, service: object) -> None:
        """Make `service` available under `name` (replacing what was there)."""
        self._items[name] = service

    def get(self, name: str, kind: type[T]) -> T:
        """The service published under `name`, checked to be a `kind`."""
        service = self._items[name]
        if not isinstance(service, kind):
            raise TypeError(f"service {name!r} is a {type(service).__name__}, not a {kind.__name__}")
        return service

    def __getitem__(self, name: str) -> object:
        return self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items


@dataclass
class WebUI:
    """Host state. `queue_lock` serialises generations (one at a time; other requests wait their turn)."""

    args: argparse.Namespace
    paths: Paths
    options: Options
    cache: DiskCache
    callbacks: Callbacks
    extra_networks: ExtraNetworkRegistry
    state: JobState
    models: Any = None  # modules.sd_models.ModelManager
    extensions: list[Extension] = field(default_factory=list)
    embeddings: EmbeddingDatabase = field(default_factory=EmbeddingDatabase)
    # Lanczos, Nearest and the upscaler model files (hires fix, SD upscale, Extras); `create` points it at models/.
    upscalers: UpscalerRegistry = field(default_factory=UpscalerRegistry)
    queue_lock: threading.Lock = field(default_factory=threading.Lock)
    # Named objects extensions publish for others (e.g. "lora" -> the Lora extension's engine).
    services: Services = field(default_factory=Services)
    # Extra-network card pages registered by extensions (`modules.ui.extra_network_pages`).
    extra_network_pages: list[Any] = field(default_factory=list)
    before_ui_ran: bool = False  # the `before_ui` callbacks ran (once per WebUI, before the first app is built)
    gradio_blocks: Any = None  # the Gradio Blocks of the UI, once built
    vae: VaeManager | None = None  # separate VAE files and the `sd_vae` selection (modules.sd_vae)
    styles: StyleDatabase | None = None  # prompt styles of styles.csv (modules.styles)
    # Script plug-ins (`modules.scripts`): the top-level scripts/ folder and every extension's scripts/ files.
    scripts: ScriptRegistry = field(default_factory=ScriptRegistry)
    startup: StartupTimer = field(default_factory=StartupTimer)  # phases of the start-up (`modules.startup_timer`)

    @classmethod
    def create(cls, argv: Sequence[str] | None = None, load_extensions_now: bool = True,
               startup: StartupTimer | None = None) -> WebUI:
        """Parse flags, prepare folders, register host options, load extensions and the model manager.
        `startup`: the server's start-up timer (phases are booked on it), else a new one."""
        startup = startup or StartupTimer()
        args = cmd_args.parse_args(argv, report=argv is not None)
        paths = Paths.from_args(args)
        paths.ensure()
        webui = cls(
            args=args,
            paths=paths,
            options=Options(paths.config_file),
            cache=DiskCache(paths.cache_file),
            callbacks=Callbacks(),
            extra_networks=ExtraNetworkRegistry(),
            state=JobState(),
            startup=startup,
        )
        from modules import sd_models, shared_options, shared_options_a1111  # noqa: PLC0415 - need the object

        shared_options.register_host_options(webui)
        shared_options_a1111.register_a1111_options(webui.options)
        webui.styles = StyleDatabase(Path(args.styles_file) if args.styles_file else paths.data_dir / "styles.csv")
        webui.vae = VaeManager(Path(args.vae_dir) if args.vae_dir else paths.models_dir / "VAE", paths.ckpt_dir,
                               webui.options, webui.cache, paths.models_dir)
        device = default_device(args.device)
        webui.upscalers = UpscalerRegistry(paths.models_dir, device=device)
        webui.models = sd_models.ModelManager(
            paths=paths,
            options=webui.options,
            cache=webui.cache,
            callbacks=webui.callbacks,
            device=device,
            dtype=default_dtype(device, args.precision),
            hashing=not args.no_hashing,
        )
        from modules import a1111_compat, forge_modules  # noqa: PLC0415

        a1111_compat.connect(webui)
        forge_modules.connect(webui)
        startup.record("settings")
        if not args.no_embedded_default:
            from modules import embedded_default  # noqa: PLC0415

            with startup.phase("embedded default"):
                embedded_default.ensure_embedded_default(paths)
        webui.scripts.webui = webui
        webui.scripts.load_folder(REPO_ROOT / "scripts")
        if load_extensions_now:
            with startup.phase("extensions", "loading extensions"):
                webui.extensions = load_extensions(webui, include_user=not args.disable_extensions)
            for ext in webui.extensions:
                for module in ext.scripts:
                    webui.scripts.add_module(module)
        return webui
