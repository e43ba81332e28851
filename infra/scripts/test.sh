#!/usr/bin/env bash
# The README's second command: set up (once) and run the full test suite: lint, types,
# the import contract, then every test tier (unit, agents, api, integration).
source "$(dirname "$0")/bootstrap.sh"
entasis_bootstrap dev
# The shared rate-limit tests run two API processes against a real Redis (Debian's).
if ! command -v redis-server >/dev/null 2>&1; then
  echo "== installing redis-server (Debian) for the rate-limit tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# The browser tests (tests/browser) drive Debian's Chromium through its driver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing chromium and chromium-driver (Debian) for the browser tests"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "== ruff";          .venv/bin/ruff check .
echo "== mypy";          .venv/bin/mypy && .venv/bin/mypy --strict clients/python/src
echo "== import contract"; .venv/bin/lint-imports
# Tests run in a random order (pytest-randomly; pyproject turns it off for a bare `pytest`), so an
# order dependence fails here rather than hiding. The seed is printed ("Using --randomly-seed=N"):
# ENTASIS_TEST_SEED=N repeats an order, ENTASIS_TEST_SHUFFLE=0 keeps the files' order. Each test's
# `random` state is left alone (--randomly-dont-reset-seed): tests draw names and ports from it.
order=(-p randomly --randomly-dont-reset-seed)
if [ -n "${ENTASIS_TEST_SEED:-}" ]; then order+=("--randomly-seed=${ENTASIS_TEST_SEED}"); fi
if [ "${ENTASIS_TEST_SHUFFLE:-1}" = 0 ]; then order=(); fi
echo "== pytest"
set +e
.venv/bin/python -m pytest "${order[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
