"""Entry point: `python launch.py [flags]` serves the WebUI; `python launch.py TOOL ...` runs a command-line tool.

The server also takes its flags from the `COMMANDLINE_ARGS` environment variable (A1111's), before the command line's.

Tools: `merge` (bake LoRAs into a checkpoint copy; `lorakit.tools.merge`), `extract` (a LoRA from two checkpoints)
and `combine` (several LoRAs into one file; `lorakit.tools.cli`), from the Lora extension's package. The repository
root is on `sys.path` because this script lives there; the extension's folder offers its imports through
`modules.extensions.EXTENSION_IMPORTS`, as when the WebUI loads extensions.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LORA = ROOT / "extensions-builtin" / "Lora"
TOOLS = {  # name -> (module of the Lora extension's package, function taking argv)
    "merge": ("lorakit.tools.merge", "main"),
    "extract": ("lorakit.tools.cli", "extract_main"),
    "combine": ("lorakit.tools.cli", "combine_main"),
}


def run_tool(name: str, argv: list[str]) -> int:
    """Import the tool's module from the Lora extension and call its function with `argv`."""
    from modules.extensions import EXTENSION_IMPORTS  # noqa: PLC0415 - imported where it is needed

    module_name, function = TOOLS[name]
    EXTENSION_IMPORTS.offer(LORA)
    module = importlib.import_module(module_name)
    return int(getattr(module, function)(argv) or 0)


def server_argv(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """The server's flags: A1111's `COMMANDLINE_ARGS` (split like a shell does; `webui-user.sh` usually sets it)
    first, then the command line's, so a flag typed on the command line wins over the same flag in the variable."""
    env = os.environ if environ is None else environ
    return shlex.split(env.get("COMMANDLINE_ARGS", "")) + list(argv)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    from modules.startup_timer import StartupTimer  # noqa: PLC0415 - imported where it is needed

    startup = StartupTimer()  # first thing, so that the imports below count
    logging.getLogger("startup").info("starting the WebUI: importing the server (torch, FastAPI)")
    from modules.webui_server import serve  # noqa: PLC0415

    return serve(server_argv(argv), startup)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
