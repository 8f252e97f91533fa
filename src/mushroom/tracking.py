"""Weights & Biases tracking: a thin wrapper that is a no-op when tracking is off.

Tracking is off when ``WANDB_MODE=disabled`` (the tests set it) or ``wandb`` is not
installed. Otherwise runs are ``offline`` unless ``WANDB_MODE`` says otherwise (``online``
needs ``WANDB_API_KEY``); offline runs land in ``WANDB_DIR`` (default ``./wandb``) and can be
uploaded later with ``wandb sync``. The project is ``WANDB_PROJECT`` (default
``quantized-mushroom``). A tracking failure is logged and never fails a stage.

In a pipeline, a stage's runs are one of its output artifacts: inside :func:`runs_in(folder)
<runs_in>` every run is written under ``folder/wandb/``, offline runs are synced when
``WANDB_API_KEY`` is set, and ``folder`` always ends with ``tracking.json`` and ``README.md``
saying what it holds (or that tracking was off). Every run's config records the image the
stage ran in (:func:`mushroom.image_identity.running_image`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushroom import variants as registry
from mushroom.image_identity import running_image

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

log = logging.getLogger(__name__)

PROJECT = "quantized-mushroom"
RUNS_FOLDER = "wandb"  # under a runs_in folder, as wandb names it under its dir
RECORD = "tracking.json"
README = "README.md"
SYNC_TIMEOUT_S = 300  # a sync that cannot reach W&B retries for ever; the run stays in the folder

_runs_folder: ContextVar[Path | None] = ContextVar("mushroom_wandb_folder", default=None)


def _off_reason() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip()
    return f"WANDB_MODE={mode}" if mode else "wandb is not installed"


def tracking_mode() -> str | None:
    """The W&B mode to use (``offline`` by default), or None when tracking is off."""
    mode = os.environ.get("WANDB_MODE", "offline").strip().lower() or "offline"
    if mode in ("disabled", "off", "false", "0"):
        return None
    try:
        import wandb  # noqa: F401
    except ImportError:
        return None
    return mode


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


class Tracker:
    """One W&B run, or nothing (every method is then a no-op)."""

    def __init__(self, run=None):
        self.run = run

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def _safely(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:  # tracking must never fail a stage
            log.warning("wandb: could not log %s: %s", what, err)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log a row of metrics (a point of a curve when ``step`` is given)."""
        self._safely("metrics", lambda: self.run.log(metrics, step=step))

    def log_summary(self, metrics: dict[str, Any]) -> None:
        """Set final metrics on the run summary (what W&B tables and comparisons show)."""
        self._safely("summary", lambda: self.run.summary.update(metrics))

    def log_images(self, images: dict[str, str | Path]) -> None:
        """Log PNG files as images, keyed by name."""
        import wandb

        self._safely("images", lambda: self.run.log({k: wandb.Image(str(p)) for k, p in images.items()}))

    def log_html(self, key: str, path: str | Path) -> None:
        import wandb

        self._safely("html", lambda: self.run.log({key: wandb.Html(Path(path).read_text(encoding="utf-8"))}))

    def log_artifact(self, path: str | Path, name: str, type: str,
                     metadata: dict[str, Any] | None = None) -> None:
        """Log a folder (or file) as a versioned artifact."""
        import wandb

        def log_it():
            artifact = wandb.Artifact(_artifact_name(name), type=type, metadata=metadata or {})
            if Path(path).is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)

        self._safely(f"artifact {name}", log_it)


@contextmanager
def tracking_run(name: str, job_type: str, config: dict[str, Any] | None = None,
                 group: str | None = None) -> Iterator[Tracker]:
    """A W&B run for one stage; yields a no-op :class:`Tracker` when tracking is off or fails.

    Args:
        name: Run name, e.g. the model configuration's name.
        job_type: The stage (``train``, ``evaluate``, ...).
        config: Hyperparameters and settings shown with the run.
        group: Groups the stages of one configuration (default: ``WANDB_RUN_GROUP`` or ``name``).
    """
    mode = tracking_mode()
    if mode is None:
        yield Tracker()
        return
    import wandb

    config = dict(config or {})
    image = running_image()
    if image:
        config.setdefault("image", image)
    folder = _runs_folder.get()
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=f"{name}-{job_type}",
                         job_type=job_type, group=group or os.environ.get("WANDB_RUN_GROUP") or name,
                         config=config, mode=mode, reinit="create_new",
                         **({"dir": str(folder)} if folder is not None else {}))
    except Exception as err:
        log.warning("wandb: tracking off, could not start a run: %s", err)
        yield Tracker()
        return
    try:
        yield Tracker(run)
    finally:
        try:
            run.finish()
        except Exception as err:
            log.warning("wandb: could not finish the run: %s", err)


def log_training_history(history: dict[str, list], config: dict[str, Any], name: str | None = None) -> None:
    """Log training curves, one W&B step per epoch (for the train stage).

    Args:
        history: Metric name -> one value per epoch (Keras ``History.history``; may include
            ``phase``).
        config: The model configuration and hyperparameters.
        name: Run name (default: ``config["model_name"]``).
    """
    name = name or str(config.get("model_name", "model"))
    with tracking_run(name, "train", config) as tracker:
        if not tracker.enabled:
            return
        epochs = max((len(v) for v in history.values()), default=0)
        for epoch in range(epochs):
            row = {k: v[epoch] for k, v in history.items() if epoch < len(v)}
            tracker.log_metrics({**row, "epoch": epoch + 1}, step=epoch)
        numeric = {k: v for k, v in history.items() if k != "phase" and v}
        tracker.log_summary({f"best_{k}": (min(v) if "loss" in k else max(v)) for k, v in numeric.items()})


def log_evaluation(evaluation: Evaluation, metrics: dict[str, float], report: dict[str, Any],
                   bundle_dir: str | Path, config: dict[str, Any] | None = None) -> None:
    """Log an evaluation: config, flat metrics, the report's plots and HTML, the bundle as an artifact.

    Args:
        evaluation: The evaluation (``evaluation.json``).
        metrics: Flat name -> number metrics.
        report: The return value of :func:`mushroom.report.write_report`.
        bundle_dir: The calibrated bundle folder.
        config: The model configuration (default: the evaluation's name and architecture).
    """
    name = evaluation.model_name
    config = config or {"model_name": name, "architecture": evaluation.architecture,
                        "image_size": evaluation.image_size}
    with tracking_run(name, "evaluate", config) as tracker:
        if not tracker.enabled:
            return
        tracker.log_summary(metrics)
        tracker.log_images({f"plots/{stem}": path for stem, path in report.get("plots", {}).items()})
        if report.get("html"):
            tracker.log_html("report", report["html"])
        full_integer = evaluation.variant(registry.FULL_INTEGER)
        tracker.log_artifact(bundle_dir, f"bundle-{name}", "model",
                             {"model_name": name, f"top1_{registry.FULL_INTEGER}": full_integer and full_integer.top1})


# --------------------------------------------------------------------------- a stage's runs as an artifact


@contextmanager
def runs_in(folder: str | Path, metadata: dict[str, Any] | None = None) -> Iterator[Path]:
    """Write the W&B runs started inside (by :func:`tracking_run`) under ``folder/wandb/``.

    For a stage whose runs are an output artifact: ``WANDB_DIR`` is ``folder`` meanwhile (and
    :func:`tracking_run` passes it to ``wandb.init``). On the way out, also after a failure:
    symbolic links wandb leaves are resolved (a link to a file outside becomes a copy, the rest
    go), offline runs are synced when ``WANDB_API_KEY`` is set (a failure is logged, never
    raised), and ``folder`` gets ``tracking.json`` (mode, runs, synced) and ``README.md``, also
    when tracking is off, so the folder is never silently empty.

    Args:
        folder: The artifact folder (created).
        metadata: Where to record the summary too (an output artifact's ``metadata``); key
            ``wandb``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mode = tracking_mode()
    token = _runs_folder.set(folder)
    previous = os.environ.get("WANDB_DIR")
    os.environ["WANDB_DIR"] = str(folder)
    try:
        yield folder
    finally:
        _runs_folder.reset(token)
        if previous is None:
            os.environ.pop("WANDB_DIR", None)
        else:
            os.environ["WANDB_DIR"] = previous
        try:
            summary = finish_runs_folder(folder, mode)
            if metadata is not None:
                metadata["wandb"] = summary
        except Exception as err:  # tracking must never fail a stage
            log.warning("wandb: could not finish the runs folder %s: %s", folder, err)


def _resolve_links(folder: Path) -> None:
    """Replace the symbolic links under ``folder`` (an artifact holds files): a link to a file
    outside becomes a copy of it; links inside ``folder``, to folders or to nothing go."""
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        if not path.is_symlink():
            continue
        target = path.resolve()
        path.unlink()
        if target.is_file() and not target.is_relative_to(root):
            shutil.copyfile(target, path)


def _run_dirs(folder: Path) -> list[Path]:
    runs = folder / RUNS_FOLDER
    return sorted(p for p in runs.glob("*run-*") if p.is_dir()) if runs.is_dir() else []


def _sync_command(runs: list[Path]) -> list[str]:
    return [sys.executable, "-m", "wandb", "sync", *(str(r) for r in runs)]


def sync_runs(runs: list[Path], timeout_s: float | None = None) -> bool:
    """Upload offline runs with ``wandb sync``; False (logged as a warning) when it fails or gives no
    answer in ``timeout_s`` (default :data:`SYNC_TIMEOUT_S`)."""
    timeout_s = SYNC_TIMEOUT_S if timeout_s is None else timeout_s
    command = _sync_command(runs)
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
    except OSError as err:
        log.warning("wandb: could not start wandb sync: %s", err)
        return False
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: wandb sync and what it started
        process.communicate()
        log.warning("wandb: sync of %d run(s) gave no answer in %gs (no network?); the runs stay in the "
                    "artifact: `wandb sync` them later", len(runs), timeout_s)
        return False
    if process.returncode != 0:
        tail = " | ".join(output.strip().splitlines()[-3:])
        log.warning("wandb: sync of %d run(s) failed (exit %d): %s; the runs stay in the artifact",
                    len(runs), process.returncode, tail)
        return False
    log.info("wandb: synced %d run(s) to project %s", len(runs), os.environ.get("WANDB_PROJECT", PROJECT))
    return True


def finish_runs_folder(folder: str | Path, mode: str | None) -> dict[str, Any]:
    """Resolve links, sync offline runs when ``WANDB_API_KEY`` is set, write ``tracking.json`` and
    ``README.md`` (see :func:`runs_in`); return the summary ``tracking.json`` holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _resolve_links(folder)
    runs = _run_dirs(folder)
    synced: bool | None = None
    if mode == "offline" and runs and os.environ.get("WANDB_API_KEY"):
        synced = sync_runs(runs)
    summary: dict[str, Any] = {
        "mode": mode or "off",
        "project": os.environ.get("WANDB_PROJECT", PROJECT),
        "runs": [r.relative_to(folder).as_posix() for r in runs],
        "synced": synced,
    }
    if mode is None:
        summary["reason"] = _off_reason()
    image = running_image()
    if image:
        summary["image"] = image
    (folder / RECORD).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / README).write_text(_readme(summary), encoding="utf-8")
    return summary


def _readme(summary: dict[str, Any]) -> str:
    head = "# Weights & Biases runs of this stage\n\n"
    if summary["mode"] == "off":
        return head + (f"Tracking was off ({summary['reason']}): no run was recorded. Without "
                       "`WANDB_MODE=disabled` runs are written here offline.\n")
    if not summary["runs"]:
        return head + (f"Tracking was on ({summary['mode']}) but no run was written: the stage's log says "
                       "why (`wandb:` lines).\n")
    runs = "".join(f"- `{r}`\n" for r in summary["runs"])
    if summary["synced"]:
        state = f"Synced to W&B project `{summary['project']}`."
    elif summary["synced"] is False:
        state = "Syncing failed (see the stage's log); upload them with `wandb sync wandb/*run-*`."
    elif summary["mode"] == "offline":
        state = "Not synced (no `WANDB_API_KEY`): upload them with `wandb sync wandb/*run-*`."
    else:
        state = f"Logged {summary['mode']} to W&B project `{summary['project']}`; these are the local files."
    return head + f"{runs}\n{state}\n"
