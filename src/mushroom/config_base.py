"""What every configuration model shares: strictness and the one error type.

:mod:`mushroom.config` (the run configuration) and :mod:`mushroom.cluster` (scheduling on a
cluster) both build on it, so neither imports the other's internals.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what is allowed."""


class Strict(BaseModel):
    """A frozen model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def format_errors(err: ValidationError, source: str) -> str:
    """pydantic's errors as ``invalid configuration SOURCE:`` and one ``field: message`` line each."""
    lines = [f"invalid configuration {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)
