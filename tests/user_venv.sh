#!/usr/bin/env bash
# Builds the "user path" virtual environment with the README's first command alone:
#   VENV_DIR=venv-user ./webui.sh --install-only
# It is rebuilt from nothing whenever requirements.txt, requirements-nodeps.txt, constraints.txt or webui.sh changed since it was built (pip
# never uninstalls, so a reused venv would keep a package removed from requirements.txt and hide the removal); else
# it is reused as it is. Test-only packages never enter it. Used by ./test.sh and by tests/test_user_path.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${USER_VENV_DIR:-venv-user}
stamp="$venv/.user-path.sha256"
want=$(cat requirements.txt requirements-nodeps.txt constraints.txt webui.sh | sha256sum | cut -d' ' -f1)
if [ -d "$venv" ] && { [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; }; then
  echo "user path: requirements or webui.sh changed, rebuilding $venv from nothing"
  rm -rf "$venv"
fi
# A plain environment, as on a user's machine: no active venv, no PYTHONPATH.
path=$PATH
if [ -n "${VIRTUAL_ENV:-}" ]; then path=${path#"$VIRTUAL_ENV/bin:"}; fi
env -u VIRTUAL_ENV -u PYTHONPATH PATH="$path" VENV_DIR="$venv" ./webui.sh --install-only
echo "$want" > "$stamp"
