#!/usr/bin/env bash
# Sets up the venv (through webui.sh), the test-only packages and Chromium, then runs the whole test suite.
#   ./test.sh            every test
#   ./test.sh -k name    extra arguments go to pytest
#   ./test.sh --reliability   only the reliability suite, in its full form, ending with its summary
set -euo pipefail
cd "$(dirname "$0")"

./webui.sh --install-only
# shellcheck disable=SC1091
. "${VENV_DIR:-venv}/bin/activate"

stamp="${VENV_DIR:-venv}/.requirements-test.sha256"
want=$(cat requirements-test.txt constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python -m pip install -q -r requirements-test.txt -c constraints.txt
  echo "$want" > "$stamp"
fi

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "Installing chromium for the browser tests"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi

ruff check .

# The user path: a second venv built by the README's first command alone (VENV_DIR=venv-user ./webui.sh
# --install-only); tests/test_user_path.py serves from it and checks LoRAs over HTTP.
if [ "${1:-}" != "--reliability" ]; then
  bash tests/user_venv.sh
fi
export PYTHONUNBUFFERED=1
# Tests use tiny models: one thread per process is faster, also for the servers the tests start.
export OMP_NUM_THREADS=1
if [ "${1:-}" = "--reliability" ]; then
  shift
  export RELIABILITY_FULL=1
  set -- tests/reliability "$@"
fi
python -m pytest -q "$@"
