"""Command-line flags: the host's `preload.py` plus every extension's `preload.py` add to one parser.

A1111 habits work: the parser never expands abbreviations (`allow_abbrev=False`: `--api` is A1111's `--api`, not
a prefix of `--api-auth`), and A1111's other flags are accepted (`A1111_FLAGS`). Those with a meaning here act
(`--no-half` = `--precision float32`, `--precision full|half|autocast`, `--use-cpu all` = `--device cpu`,
`--server-name` = the address to bind); the others are ignored with a one-line note each (`ignored_flag_notes`),
logged once when the WebUI starts. Flags an extension registers itself take precedence over the table.
`COMMANDLINE_ARGS` (and `webui-user.sh`, which usually sets it) are read by `webui.sh`, as in A1111.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

from modules.paths import REPO_ROOT

log = logging.getLogger(__name__)

# A1111 flag -> (takes a value, what it means here). Flags with their own meaning are handled in `_apply_a1111`.
A1111_FLAGS: dict[str, tuple[bool, str]] = {
    "--api": (False, "the API is always served here"),
    "--xformers": (False, "attention is diffusers' scaled-dot-product attention, chosen automatically"),
    "--force-enable-xformers": (False, "attention is diffusers' scaled-dot-product attention"),
    "--xformers-flash-attention": (False, "attention is diffusers' scaled-dot-product attention"),
    "--opt-sdp-attention": (False, "scaled-dot-product attention is already used"),
    "--opt-sdp-no-mem-attention": (False, "scaled-dot-product attention is already used"),
    "--opt-split-attention": (False, "attention is chosen automatically"),
    "--opt-split-attention-v1": (False, "attention is chosen automatically"),
    "--opt-split-attention-invokeai": (False, "attention is chosen automatically"),
    "--opt-sub-quad-attention": (False, "attention is chosen automatically"),
    "--disable-opt-split-attention": (False, "attention is chosen automatically"),
    "--opt-channelslast": (False, "memory format is chosen automatically"),
    "--medvram": (False, "no partial offloading here; the whole model stays on the device"),
    "--medvram-sdxl": (False, "no partial offloading here; the whole model stays on the device"),
    "--lowvram": (False, "no partial offloading here; the whole model stays on the device"),
    "--lowram": (False, "checkpoints are memory-mapped already"),
    "--no-half-vae": (False, "the VAE runs in the model's dtype (use --precision float32 for full precision)"),
    "--upcast-sampling": (False, "sampling runs in the model's dtype"),
    "--disable-nan-check": (False, "there is no NaN check to disable"),
    "--autolaunch": (False, "no browser is opened; open the printed URL"),
    "--share": (False, "no public share links (the WebUI works offline)"),
    "--theme": (True, "open the page with ?__theme=dark or ?__theme=light instead"),
    "--gradio-auth": (True, "not supported; use --api-auth for the API and keep the UI on 127.0.0.1"),
    "--gradio-auth-path": (True, "not supported; use --api-auth"),
    "--enable-insecure-extension-access": (False, "extensions are installed by copying them into extensions/"),
    "--skip-torch-cuda-test": (False, "there is no CUDA test; the CPU is used when CUDA is missing"),
    "--skip-python-version-check": (False, "there is no Python version check"),
    "--skip-version-check": (False, "there is no version check"),
    "--skip-prepare-environment": (False, "use --skip-install with webui.sh"),
    "--reinstall-torch": (False, "webui.sh installs torch when it is missing"),
    "--reinstall-xformers": (False, "xformers is not used"),
    "--update-check": (False, "there is no update check"),
    "--update-all-extensions": (False, "extensions are not updated automatically"),
    "--no-download-sd-model": (False, "no model is ever downloaded (the tiny embedded default is written instead)"),
    "--do-not-download-clip": (False, "nothing is ever downloaded"),
    "--disable-safe-unpickle": (False, "pickles are always loaded with weights_only=True"),
    "--no-gradio-queue": (False, "the queue keeps generations one at a time"),
    "--no-progressbar-hiding": (False, "the progress bar is always shown"),
    "--disable-console-progressbars": (False, "console progress bars stay on"),
    "--api-log": (False, "API requests are not logged one by one"),
    "--log-startup": (False, "start-up is always logged"),
    "--allow-code": (False, "there is no custom-code script"),
    "--freeze-settings": (False, "settings stay editable"),
    "--hide-ui-dir-config": (False, "there is no folder configuration in the UI"),
    "--administrator": (False, "no administrator mode"),
    "--add-stop-route": (False, "stop the server with Ctrl+C"),
    "--disable-model-loading-ram-optimization": (False, "checkpoints are memory-mapped"),
    "--use-ipex": (False, "Intel XPU is not supported; CUDA or CPU is used"),
    "--use-directml": (False, "DirectML is not supported; CUDA or CPU is used"),
    "--disable-all-extensions": (False, "use --disable-extensions (built-in extensions always load)"),
    "--disable-extra-extensions": (False, "use --disable-extensions"),
    "--cors-allow-origins": (True, "CORS headers are not sent"),
    "--cors-allow-origins-regex": (True, "CORS headers are not sent"),
    "--tls-keyfile": (True, "no TLS; put a reverse proxy in front for HTTPS"),
    "--tls-certfile": (True, "no TLS; put a reverse proxy in front for HTTPS"),
    "--device-id": (True, "use --device cuda:N"),
    "--loglevel": (True, "the log level is INFO"),
    "--ui-config-file": (True, "there is no ui-config.json"),
    "--ui-settings-file": (True, "use --data-dir (config.json lives there)"),
    "--styles-file": (True, "styles are not read from a file given on the command line"),
    "--embeddings-dir": (True, "embeddings come from the LoRA files that bundle them"),
    "--hypernetwork-dir": (True, "hypernetworks are not supported"),
    "--vae-dir": (True, "VAEs come from the checkpoint"),
    "--codeformer-models-path": (True, "face restoration is not supported"),
    "--gfpgan-models-path": (True, "face restoration is not supported"),
    "--esrgan-models-path": (True, "use --models-dir"),
    "--realesrgan-models-path": (True, "use --models-dir"),
    "--timeout-keep-alive": (True, "the server's keep-alive timeout is fixed"),
    "--subpath": (True, "the UI is served at /"),
    "--ngrok": (True, "no tunnels (the WebUI works offline)"),
}
PRECISION_ALIASES = {"full": "float32", "half": "float16", "autocast": "auto"}  # A1111's --precision values


def extension_dirs(root: Path = REPO_ROOT, include_user: bool = True) -> list[Path]:
    """Extension folders in load order: `extensions-builtin/*` then `extensions/*`, each sorted by name."""
    folders = [root / "extensions-builtin"] + ([root / "extensions"] if include_user else [])
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found.extend(sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    return found


def _run_preload(path: Path, parser: argparse.ArgumentParser) -> None:
    spec = importlib.util.spec_from_file_location(f"_preload_{abs(hash(str(path)))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if hasattr(module, "preload"):
        module.preload(parser)


def _add_a1111_flags(parser: argparse.ArgumentParser) -> None:
    """A1111's flags that nobody registered: the ones with a meaning here, then the table of ignored ones."""
    group = parser.add_argument_group("A1111 flags", "accepted for A1111 habits; see the notes at start-up")
    taken = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public list of option strings
    own = (("--no-half", {"action": "store_true", "help": "= --precision float32"}),
           ("--use-cpu", {"nargs": "*", "default": None, "help": "`all` = --device cpu"}),
           ("--server-name", {"default": None, "help": "address to bind (default 127.0.0.1, 0.0.0.0 with --listen)"}))
    for flag, kwargs in own:
        if flag not in taken:
            group.add_argument(flag, **kwargs)
    for flag, (takes_value, reason) in A1111_FLAGS.items():
        if flag in taken:
            continue
        dest = "a1111_" + flag.lstrip("-").replace("-", "_")
        if takes_value:
            group.add_argument(flag, dest=dest, default=None, metavar="VALUE", help=f"ignored: {reason}")
        else:
            group.add_argument(flag, dest=dest, action="store_true", default=None, help=f"ignored: {reason}")


def build_parser(extensions: Sequence[Path] | None = None) -> argparse.ArgumentParser:
    """The full parser: host flags, then each extension's flags, then A1111's remaining flags; no abbreviations."""
    parser = argparse.ArgumentParser(prog="webui", description="Stable Diffusion WebUI", allow_abbrev=False)
    _run_preload(REPO_ROOT / "preload.py", parser)
    for ext in extensions if extensions is not None else extension_dirs():
        if (ext / "preload.py").is_file():
            _run_preload(ext / "preload.py", parser)
    _add_a1111_flags(parser)
    return parser


def ignored_flag_notes(args: argparse.Namespace) -> list[str]:
    """One line per A1111 flag given that has no meaning here, saying why."""
    notes = []
    for flag, (_, reason) in A1111_FLAGS.items():
        if getattr(args, "a1111_" + flag.lstrip("-").replace("-", "_"), None) not in (None, False):
            notes.append(f"{flag} is accepted for A1111 compatibility and ignored: {reason}")
    return notes


def _apply_a1111(args: argparse.Namespace) -> None:
    """Give A1111's flags with a meaning here their effect on the host's own flags."""
    if getattr(args, "precision", None) in PRECISION_ALIASES:
        args.precision = PRECISION_ALIASES[args.precision]
    if getattr(args, "no_half", False) and getattr(args, "precision", None) == "auto":
        args.precision = "float32"
    if getattr(args, "use_cpu", None) and getattr(args, "device", None) is None:
        args.device = "cpu"


def parse_args(argv: Sequence[str] | None = None, report: bool = False) -> argparse.Namespace:
    """Parse `argv` (default: none, so tests get the defaults) with every extension's flags registered; with
    `report`, log a note for each ignored A1111 flag."""
    args = build_parser().parse_args(list(argv) if argv is not None else [])
    _apply_a1111(args)
    if report:
        for note in ignored_flag_notes(args):
            log.info("%s", note)
    return args
