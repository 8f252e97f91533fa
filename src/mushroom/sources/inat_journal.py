"""The append-only journal that makes iNaturalist acquisition resumable.

One JSON object per line, appended and flushed as things happen:

* ``{"event": "page", "taxon_id", "id_above", "next_id_above", "done", "observations"}``:
  a query page, so a rerun replays the query without asking the API again;
* ``{"event": "photo", "taxon_id", "photo_id", "file", "sha256", "size", ...}``: written
  *after* the photo's file was renamed into place;
* ``{"event": "failure", "taxon_id", "photo_id", "reason", "detail", "permanent"}``.

A process killed mid-write leaves at most one torn last line, which :meth:`Journal.open` cuts
off. A file renamed into place whose ``photo`` line never made it is an orphan; the caller
removes those (see :func:`reconcile_images`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"


class AcquisitionInterrupted(RuntimeError):
    """Acquisition stopped on a failure outside the data: the network, the disk, the request budget.

    Everything committed before it is in the journal, so rerunning the same command resumes.
    """


def interrupted(what: str, out_dir: Path) -> str:
    """The one-line message for an :class:`AcquisitionInterrupted`: what failed and how to resume."""
    return (
        f"{what}. Progress is saved in {out_dir}: rerun the same command to resume "
        f"(photos already kept are not downloaded again)"
    )


class Journal:
    """Replayed events of earlier runs plus an append handle for this one.

    Attributes:
        pages: Per taxon, its query pages in order.
        outcomes: Per photo id, the latest ``photo`` or ``failure`` event.
    """

    def __init__(self, path: Path):
        self.path = path
        self.pages: dict[int, list[dict[str, Any]]] = {}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._handle = None

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Read the journal at ``path`` (repairing a torn last line) and open it for appending."""
        journal = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for event in _read_events(path):
            journal._apply(event)
        journal._handle = path.open("a", encoding="utf-8")
        return journal

    def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError as err:  # e.g. a full disk: at most a torn last line, repaired by open()
                log.warning("journal %s: could not flush on close: %s", self.path, err)

    def append(self, event: dict[str, Any]) -> None:
        """Write one event and flush it to the OS (it survives the process being killed)."""
        self._handle.write(json.dumps(event, separators=(",", ":")) + "\n")
        self._handle.flush()
        self._apply(event)

    def accepted(self) -> Iterator[dict[str, Any]]:
        """The ``photo`` events that are still current."""
        return (e for e in self.outcomes.values() if e["event"] == "photo")

    def forget(self, photo_id: str) -> None:
        """Drop a photo's outcome (its file is gone), so this run fetches it again."""
        self.outcomes.pop(photo_id, None)

    def _apply(self, event: dict[str, Any]) -> None:
        if event["event"] == "page":
            self.pages.setdefault(int(event["taxon_id"]), []).append(event)
        elif event["event"] in ("photo", "failure"):
            self.outcomes[str(event["photo_id"])] = event


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    raw = path.read_bytes()
    end = raw.rfind(b"\n") + 1
    if end < len(raw):
        log.warning(
            "journal %s: dropping a torn last line (%d bytes) from an interrupted run", path, len(raw) - end
        )
        with path.open("r+b") as handle:
            handle.truncate(end)
            os.fsync(handle.fileno())
    return [json.loads(line) for line in raw[:end].decode("utf-8").splitlines() if line.strip()]


def reconcile_images(images_dir: Path, out_dir: Path, journal: Journal) -> tuple[int, int]:
    """Make the journal and the files under ``images_dir`` agree, before resuming.

    Removes temporary files of interrupted writes and files no ``photo`` event names; forgets
    ``photo`` events whose file is missing or has the wrong size (they are fetched again).

    Args:
        images_dir: ``<out_dir>/images``.
        out_dir: The folder the events' ``file`` paths are relative to.
        journal: The opened journal.

    Returns:
        ``(files_removed, photos_forgotten)``.
    """
    forgotten = 0
    for event in list(journal.accepted()):
        path = out_dir / event["file"]
        if not path.is_file() or path.stat().st_size != event["size"]:
            journal.forget(str(event["photo_id"]))
            forgotten += 1
    keep = {event["file"] for event in journal.accepted()}
    return prune_images(images_dir, out_dir, keep), forgotten


def prune_images(images_dir: Path, out_dir: Path, keep: set[str]) -> int:
    """Delete every file under ``images_dir`` whose path (relative to ``out_dir``) is not in ``keep``."""
    if not images_dir.is_dir():
        return 0
    removed = 0
    for path in sorted(images_dir.rglob("*")):
        if path.is_file() and path.relative_to(out_dir).as_posix() not in keep:
            path.unlink()
            removed += 1
    return removed
