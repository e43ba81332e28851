"""`python -m infra.cli ...` is the `entasis` command (how `up` starts its child processes)."""

import sys

from infra.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
