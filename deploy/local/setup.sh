#!/usr/bin/env bash
# Creates the project's virtual environment with every pinned dependency, and builds the engines.
# Idempotent: a second run with nothing changed takes a few seconds.
source "$(dirname "$0")/lib.sh"

PY="${BANKSYNC_PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { say "ERROR: Python 3.11+ is needed (found $("$PY" --version 2>&1))"; exit 1; }

stamp="$VENV/.installed-lock"
want="$(cat "$ROOT/requirements.lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-64)"
if [ ! -x "$PYTHON" ]; then
  say "creating virtual environment in $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned dependencies (requirements.lock)"
  "$PYTHON" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements.lock"
  "$PYTHON" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
  echo "$want" >"$stamp"
fi
"$ROOT/deploy/local/kafka.sh" install
"$ROOT/deploy/local/ferretdb.sh" install
say "setup complete"
