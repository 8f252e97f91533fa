"""Weights & Biases tracking: a thin wrapper that is a no-op when tracking is off.

Tracking is off when ``WANDB_MODE=disabled`` (the tests set it) or ``wandb`` is not
installed. Otherwise runs are ``offline`` unless ``WANDB_MODE`` says otherwise (``online``
needs ``WANDB_API_KEY``); offline runs land in ``WANDB_DIR`` (default ``./wandb``) and can be
uploaded later with ``wandb sync``. The project is ``WANDB_PROJECT`` (default
``quantized-mushroom``). A tracking failure is logged and never fails a stage.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mushroom import variants as registry

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

log = logging.getLogger(__name__)

PROJECT = "quantized-mushroom"


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

    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=f"{name}-{job_type}",
                         job_type=job_type, group=group or os.environ.get("WANDB_RUN_GROUP") or name,
                         config=config or {}, mode=mode, reinit="create_new")
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
