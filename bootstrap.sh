#!/usr/bin/env bash
# Run flywheel-bootstrap through uvx, installing uv first when it is missing.
#
#   ./bootstrap.sh demo                                  # try it: local backend + mock agent
#   FLYWHEEL_RUN_TOKEN=... ./bootstrap.sh --run-id ID --config ~/.codex/config.toml --server URL
#
# FLYWHEEL_BOOTSTRAP_PACKAGE picks what uvx runs: a path (default: this checkout)
# or a git URL such as git+https://HOST/OWNER/flywheel-bootstrap. Not the bare name
# `flywheel-bootstrap`: on the package index that is the original 0.1.9.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
package="${FLYWHEEL_BOOTSTRAP_PACKAGE:-$here}"

find_uvx() {
  if command -v uvx >/dev/null 2>&1; then command -v uvx; return; fi
  local venv="${FLYWHEEL_HOME:-$HOME/.flywheel}/uv"
  if [ -x "$venv/bin/uvx" ]; then echo "$venv/bin/uvx"; return; fi
  local python
  python="$(command -v python3 || command -v python || true)"
  if [ -z "$python" ]; then
    echo "bootstrap.sh: uv is not installed and no python3 was found to install it; install uv (https://docs.astral.sh/uv/)" >&2
    exit 4
  fi
  echo "bootstrap.sh: installing uv into $venv (one time)" >&2
  # A private venv: works where pip --user is refused (PEP 668 system Pythons).
  "$python" -m venv "$venv" >&2 && "$venv/bin/python" -m pip install --quiet uv >&2 || {
    echo "bootstrap.sh: could not install uv with pip; install it by hand and run again" >&2
    exit 4
  }
  echo "$venv/bin/uvx"
}

uvx="$(find_uvx)"
exec "$uvx" --from "$package" flywheel-bootstrap "$@"
