"""A1111 command-line habits (issue 15): A1111's flags accepted, no argparse abbreviation trap, COMMANDLINE_ARGS and
webui-user.sh honoured by webui.sh, and a busy port found before the model loads, with a clear message and exit 1.

The webui.sh runs use a copy of the script in a temporary folder (with links to the repository's files), so the
test's own webui-user.sh never touches the repository's.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from modules import cmd_args
from modules.webui_server import bind_host, port_problem
from tests.helpers.paths import ROOT
from tests.helpers.servers import free_port

LINKED = ("launch.py", "modules", "extensions-builtin", "preload.py", "javascript", "style.css", "requirements.txt",
          "constraints.txt", "venv")


def test_a1111_flags_are_accepted_and_abbreviations_are_not_expanded():
    args = cmd_args.parse_args(["--api", "--xformers", "--medvram", "--opt-sdp-attention", "--theme", "dark",
                                "--api-auth", "u:p"])
    assert args.api_auth == "u:p"  # --api did not swallow --api-auth (nor the other way round)
    notes = cmd_args.ignored_flag_notes(args)
    assert [note.split(" ")[0] for note in notes] == ["--api", "--xformers", "--opt-sdp-attention", "--medvram",
                                                      "--theme"]
    assert notes[1] == ("--xformers is accepted for A1111 compatibility and ignored: attention is diffusers' "
                        "scaled-dot-product attention, chosen automatically")
    with pytest.raises(SystemExit) as stop:
        cmd_args.parse_args(["--api-aut", "u:p"])  # argparse would have taken this as --api-auth
    assert stop.value.code == 2
    assert cmd_args.ignored_flag_notes(cmd_args.parse_args([])) == []


def test_a1111_flags_with_a_meaning_here_act():
    assert cmd_args.parse_args(["--no-half"]).precision == "float32"
    assert cmd_args.parse_args(["--precision", "full"]).precision == "float32"
    assert cmd_args.parse_args(["--precision", "autocast"]).precision == "auto"
    assert cmd_args.parse_args(["--use-cpu", "all"]).device == "cpu"
    assert bind_host(cmd_args.parse_args(["--server-name", "127.0.0.2"])) == "127.0.0.2"
    assert bind_host(cmd_args.parse_args(["--listen"])) == "0.0.0.0"
    assert cmd_args.parse_args(["--lyco-dir-backcompat", "x"]).lyco_dir == "x"  # the extension's own flag wins


def test_port_problem_names_a_busy_port_and_passes_a_free_one():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message = port_problem("127.0.0.1", port)
        assert message == (f"port {port} on 127.0.0.1 is already in use (is another WebUI running?): stop it, or "
                           f"start with --port {port + 1} (any free port)")
    assert port_problem("127.0.0.1", free_port()) is None


@pytest.fixture
def script_copy(tmp_path):
    """webui.sh in a folder of its own, the repository's files linked beside it."""
    folder = tmp_path / "webui"
    folder.mkdir()
    (folder / "webui.sh").write_bytes((ROOT / "webui.sh").read_bytes())
    (folder / "webui.sh").chmod(0o755)
    for name in LINKED:
        os.symlink(os.path.realpath(ROOT / name), folder / name)
    return folder


def _run(folder, env_extra: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
    env.update(env_extra, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(folder / "webui.sh"), "--skip-install", *argv], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=180)


def test_webui_sh_reads_webui_user_sh_and_a_busy_port_stops_before_the_model_loads(script_copy, tmp_path):
    data = tmp_path / "data"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (script_copy / "webui-user.sh").write_text(
            f'export COMMANDLINE_ARGS="--port {port} --data-dir {data} --xformers --medvram"\n')
        result = _run(script_copy, {})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert "loading checkpoint" not in output and not (data / "models").exists()  # nothing loaded, nothing written


def test_commandline_args_reach_the_server_through_webui_sh(script_copy):
    result = _run(script_copy, {"COMMANDLINE_ARGS": "--xformers --no-such-flag"})
    assert result.returncode == 2 and "unrecognized arguments: --no-such-flag" in result.stderr
    result = _run(script_copy, {"COMMANDLINE_ARGS": "--xformers --help"})
    assert result.returncode == 0 and "--xformers" in result.stdout and "A1111 flags" in result.stdout


def test_commandline_args_come_first_so_the_command_line_wins():
    import launch  # noqa: PLC0415 - the entry script at the repository root

    argv = launch.server_argv(["--port", "7000"], {"COMMANDLINE_ARGS": "--port 6000 --lora-dir '/my loras'"})
    assert argv == ["--port", "6000", "--lora-dir", "/my loras", "--port", "7000"]
    args = cmd_args.parse_args(argv)
    assert args.port == 7000 and args.lora_dir == "/my loras"
    assert launch.server_argv(["--listen"], {}) == ["--listen"]
