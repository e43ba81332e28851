#!/usr/bin/env bash
# The README's first command: set up (once) and run the whole system on the embedded
# broker and database. Arguments go to `entasis up` (e.g. --replay ../shared/data/binance).
source "$(dirname "$0")/bootstrap.sh"
entasis_bootstrap
exec .venv/bin/entasis up "$@"
