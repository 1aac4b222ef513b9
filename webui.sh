#!/usr/bin/env bash
# Sets up everything the WebUI needs on a fresh machine, then starts it.
#   ./webui.sh [--port N] [--listen] [--data-dir D] [--lora-dir D] ...   serve UI + API on 127.0.0.1:7860
#   ./webui.sh merge --ckpt PATH --lora-dir DIR --prompt "<lora:a:0.7>" --out PATH
#   ./webui.sh --install-only                                            set up the venv and exit
#   ./webui.sh --skip-install ...                                        never run pip
# Environment: PYTHON (interpreter used to create the venv), VENV_DIR (default venv/),
#              TORCH_COMMAND (default "pip install torch==2.13.0"), COMMANDLINE_ARGS (flags for the server, before
#              the command line's), as in A1111. webui-user.sh beside this script is sourced first: set them there.
set -euo pipefail
cd "$(dirname "$0")"

if [ -f webui-user.sh ]; then
  # shellcheck disable=SC1091
  . ./webui-user.sh
fi
export COMMANDLINE_ARGS="${COMMANDLINE_ARGS:-}"

skip_install=0
install_only=0
args=()
for arg in "$@"; do
  case "$arg" in
    --skip-install) skip_install=1 ;;
    --install-only) install_only=1 ;;
    *) args+=("$arg") ;;
  esac
done

PYTHON=${PYTHON:-python3}
VENV_DIR=${VENV_DIR:-venv}
TORCH_COMMAND=${TORCH_COMMAND:-"pip install torch==2.13.0"}

if [ ! -x "$VENV_DIR/bin/python" ]; then
  echo "Creating virtual environment in $VENV_DIR"
  "$PYTHON" -m venv "$VENV_DIR"
fi
# shellcheck disable=SC1091
. "$VENV_DIR/bin/activate"

if [ "$skip_install" = 0 ]; then
  if ! python -c "import torch" >/dev/null 2>&1; then
    echo "Installing torch: $TORCH_COMMAND"
    python -m pip install -q --upgrade pip
    $TORCH_COMMAND
  fi
  # Re-runs skip pip when the requirements files and constraints.txt are unchanged since the last install.
  stamp="$VENV_DIR/.requirements.sha256"
  want=$(cat requirements.txt requirements-nodeps.txt constraints.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing requirements.txt"
    python -m pip install -q -r requirements.txt -c constraints.txt
    # openai-clip ships CLIP's BPE vocabulary; its own deps (torchvision) are not needed for the tokenizer.
    python -m pip install -q --no-deps openai-clip==1.0.1
    # Packages whose declared dependencies are not wanted (spandrel -> torchvision); their real ones are above.
    python -m pip install -q --no-deps -r requirements-nodeps.txt -c constraints.txt
    echo "$want" > "$stamp"
  fi
fi

if [ "$install_only" = 1 ]; then
  exit 0
fi
exec python launch.py "${args[@]+"${args[@]}"}"
