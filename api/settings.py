"""Settings of the API process alone (ENTASIS_API_*); the database address and the listen
address stay in `infra.settings.Settings`, shared with every other process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ENTASIS_API_", env_file=".env", frozen=True, extra="ignore")

    # How long the set of served symbols is reused before asking the database again: a new
    # symbol becomes visible this late, and unknown-symbol requests cost no query meanwhile.
    symbols_cache_seconds: float = Field(default=5.0, ge=0)
    # uvicorn's per-request access log costs more than a price lookup; off unless asked for.
    access_log: bool = False


@lru_cache(maxsize=1)
def get_api_settings() -> ApiSettings:
    return ApiSettings()
