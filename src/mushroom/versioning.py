"""Schema versions of the files the project writes and reads back.

``metadata.json``, ``calibration.json`` and ``evaluation.json`` carry ``schema_version``. A
reader accepts its current version and the previous one, or every one back to the oldest it
migrates (files written before the field existed count as version 1), and refuses newer ones
with one clear line.
"""

from __future__ import annotations

from typing import Any


class SchemaVersionError(ValueError):
    """A file was written by a newer (or unknown) schema than this code reads."""


def schema_version(data: dict[str, Any]) -> int:
    """The file's schema version (1 for files from before the field existed)."""
    return data.get("schema_version", 1)


def check_schema_version(data: Any, current: int, source: str, oldest: int | None = None) -> int:
    """Return the schema version of ``data`` if this code reads it (``oldest`` to ``current``).

    Args:
        oldest: The oldest version the reader migrates (default: ``current - 1``).

    Raises:
        SchemaVersionError: The version is newer than ``current``, older than the previous
            one, or not a whole number; the message names ``source`` and what to do.
    """
    if not isinstance(data, dict):
        raise SchemaVersionError(f"{source}: expected a JSON object")
    version = schema_version(data)
    if not isinstance(version, int) or isinstance(version, bool):
        raise SchemaVersionError(f"{source}: schema_version {version!r} is not a whole number")
    if version > current:
        raise SchemaVersionError(f"{source} has schema version {version}, newer than this quantized-mushroom "
                                 f"reads ({current}); upgrade quantized-mushroom to read it")
    oldest = current - 1 if oldest is None else oldest
    if version < oldest:
        readable = f"{oldest} or {current}" if oldest == current - 1 else f"{oldest} to {current}"
        raise SchemaVersionError(f"{source} has schema version {version}, older than this quantized-mushroom "
                                 f"reads ({readable}); rebuild it with a newer pipeline")
    return version
