# Sourced by the other scripts. `entasis_bootstrap [EXTRA]` makes a project-local virtual
# environment with the project installed (editable, with the optional extra), on first use
# and again whenever pyproject.toml changed. Needs Python 3.11 (python3.11 or python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

entasis_bootstrap() {
  local extras="${1:-}"
  local py
  py="$(command -v python3.11 || command -v python3)"
  "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version}"'
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  local stamp=".venv/.installed${extras:+-$extras}"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ clients/python/pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch is not a dependency; if a later feature adds it, pin torch==2.13.0 (CPU wheel on disk).
    .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
    if [ "$extras" = dev ]; then
      # The Python client is its own package (clients/python); its tests run against this API.
      .venv/bin/python -m pip install --quiet -e clients/python
    fi
    touch "$stamp"
  fi
}
