#!/usr/bin/env bash
# Your settings for ./webui.sh (sourced by it, as in A1111). Uncomment and edit; flags typed on the command line
# come after COMMANDLINE_ARGS and win.

# Flags for the server, e.g. "--port 7861 --listen --lora-dir /data/loras --api-auth user:secret"
#export COMMANDLINE_ARGS=""

# Python used to create the virtual environment, and where it lives
#PYTHON=python3
#VENV_DIR=venv

# How torch is installed when it is missing
#export TORCH_COMMAND="pip install torch==2.13.0"
