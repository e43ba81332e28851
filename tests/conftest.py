"""The whole suite reads the recorded data and the user's specification in place, from ../shared
beside the repository (CI lays it there too). Without it, every test that needs it would fail or,
worse, skip: so the session refuses to start and says why."""

from __future__ import annotations

import pytest

from tests.shared_data import DATA, SHARED


def pytest_sessionstart(session: pytest.Session) -> None:
    needed = [DATA / "README.md", DATA / "binance", DATA / "history", SHARED / "SPEC.md",
              SHARED / "seed" / "api-specification.txt"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        pytest.exit(f"../shared is not beside the repository (missing: {', '.join(missing)}); "
                    "the tests read recorded data and the specification from there", returncode=1)
