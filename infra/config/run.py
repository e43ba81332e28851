"""One isolation switch: the settings of a named run (`--run-id NAME` on `replay`, `worker`,
`api` and `up`).

A run is a replay or a backtest that must never touch the live deployment's data. Isolation
has three parts, and missing any one of them leaks: the topic namespace (its raw and derived
topics), the ClickHouse database (its tables) and the Faust app id (its consumer group, hence
its committed offsets). `for_run` derives all three from the one name, so every command of a
run computes the same values and none can be forgotten:

    topic namespace   run-NAME.           (`run-NAME.md.trades.v1`, ...)
    database          entasis_run_NAME
    consumer group    entasis-run-NAME    (the Faust app id)

Hyphens in NAME become underscores everywhere (an unquoted ClickHouse identifier cannot hold
a hyphen), so `a-b` and `a_b` name the same run.

A run also decides time by event time only, so that its output depends on its input and not
on the pace it was played at: no wall-clock idle close of candle windows (a window closes when
a later trade of its stream passes it) and no stale-feed check (a replay has no live feed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra.config.settings import Settings

RUN_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DATABASE_PREFIX = "entasis_run_"


class BadRunId(ValueError):
    """A run id that is malformed, or that would make the run write into the live data."""


@dataclass(frozen=True)
class RunNames:
    run_id: str  # normalised: hyphens as underscores
    topic_namespace: str
    database: str
    worker_id: str


def run_names(name: str) -> RunNames:
    """The names a run `name` uses; BadRunId if `name` is not `[a-z0-9][a-z0-9_-]{0,31}`."""
    if not isinstance(name, str) or RUN_ID_PATTERN.fullmatch(name) is None:
        raise BadRunId(
            f"run id {name!r} is not valid: 1 to 32 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or a digit"
        )
    run_id = name.replace("-", "_")
    return RunNames(
        run_id=run_id,
        topic_namespace=f"run-{run_id}.",
        database=f"{DATABASE_PREFIX}{run_id}",
        worker_id=f"entasis-run-{run_id}",
    )


def for_run(settings: Settings, name: str) -> Settings:
    """`settings` isolated as run `name` (see the module docstring). BadRunId when `name` is
    malformed or names the live database (`settings.clickhouse.database`): such a run would
    read and write the live tables."""
    names = run_names(name)
    live = settings.clickhouse.database
    # Deriving a run's settings again gives the same run (a child of `up --run-id` inherits the
    # run's database and namespace); a live database that only happens to carry the run's name does not.
    already_this_run = live == names.database and settings.topic_namespace == names.topic_namespace
    if live in (name, names.run_id) or (live == names.database and not already_this_run):
        raise BadRunId(
            f"run id {name!r} names the live database {live!r}: a run must not write into live "
            "tables; choose another run id"
        )
    return settings.model_copy(
        update={
            "topic_namespace": names.topic_namespace,
            "clickhouse": settings.clickhouse.model_copy(update={"database": names.database}),
            "worker": settings.worker.model_copy(update={"id": names.worker_id}),
            # event time only (see the module docstring): an infinite idle timeout never fires
            "candle": settings.candle.model_copy(update={"idle_timeout_s": float("inf")}),
            "stale_feed_seconds": 0.0,
        }
    )


def is_run(settings: Settings) -> bool:
    """Whether `settings` are those of a run (its database is a run's)."""
    return settings.clickhouse.database.startswith(DATABASE_PREFIX)
