"""Entry point: `python launch.py [flags]` serves the WebUI; `python launch.py TOOL ...` runs a command-line tool.

Tools: `merge` (bake LoRAs into a checkpoint copy; extensions-builtin/Lora/merge_tool.py), `extract` (a LoRA from
two checkpoints) and `combine` (several LoRAs into one file; extensions-builtin/Lora/lora_tools_cli.py).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
LORA = ROOT / "extensions-builtin" / "Lora"
TOOLS = {  # name -> (module file, function taking argv)
    "merge": (LORA / "merge_tool.py", "main"),
    "extract": (LORA / "lora_tools_cli.py", "extract_main"),
    "combine": (LORA / "lora_tools_cli.py", "combine_main"),
}


def run_tool(name: str, argv: list[str]) -> int:
    """Import the tool's module (its extension folder on sys.path) and call its `main(argv)`."""
    path, function = TOOLS[name]
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(getattr(module, function)(argv) or 0)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    sys.path.insert(0, str(ROOT))
    from modules.webui_server import serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
