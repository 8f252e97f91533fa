"""What a pipeline run shows a person: stage lines that name their configuration, read back.

Inside a stage, :func:`setup_stage_logging` makes every log record one line that names the
stage and, for the stages of one model configuration (tune, train, quantize, evaluate), the
configuration, so the lines of configurations running side by side (ParallelFor) can be told
apart::

    2026-11-28 04:31:36,203 INFO mushroom: [train mobilenetv3-demo] train mobilenetv3-demo: started
    2026-11-28 04:31:40,911 INFO mushroom.training: [train mobilenetv3-demo] epoch 3/14 (phase 1): ...

:func:`parse_line` reads such a line back; :func:`progress_of` recognises the epoch and trial
lines (:mod:`mushroom.training`) that a runner turns into progress bars; :func:`shown_on_console`
says which lines a person needs on the console (the rest is for the full log).
:func:`closing_table` is the table a run ends with. Nothing here imports KFP or TensorFlow.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation

from mushroom.stage_names import LOOP_STAGES

# The stages of one model configuration: their lines must name it.
CONFIGURATION_STAGES = LOOP_STAGES

FORMAT = "%(asctime)s %(levelname)s %(name)s: [%(stage_tag)s] %(message)s"

# Loggers whose INFO lines are detail (per-file uploads, per-variant timings): full log only.
DETAIL_LOGGERS = ("mushroom.storage", "mushroom.evaluate", "mushroom.report", "mushroom.tflite",
                  "mushroom.tracking", "mushroom.calibration", "mushroom.latency", "mushroom.shards.reads",
                  "mushroom.trials")

_LINE = re.compile(r"^(?P<date>\d{4}-\d\d-\d\d) (?P<time>\d\d:\d\d:\d\d)(?:[,.]\d+)? (?P<level>[A-Z]+) "
                   r"(?P<logger>mushroom(?:\.[\w.]+)?): \[(?P<tag>[^\]]+)\] (?P<message>.*)$")
# "epoch 3/14 ..." (train) or "trial 2 (round 1), epoch 1/3 ..." (a tune trial task), as mushroom.training
# logs them.
_PROGRESS = re.compile(r"^(?:trial \d+ \(round \d+\), )?epoch (?P<epoch>\d+)/(?P<epochs>\d+)\b")


class _StageTag(logging.Filter):
    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        record.stage_tag = self.tag
        return True


def stage_tag(stage: str, configuration: str | None = None) -> str:
    """``train mobilenetv3-demo`` for a configuration's stage, ``acquire`` for a shared one."""
    return f"{stage} {configuration}" if configuration else stage


def setup_stage_logging(stage: str, configuration: str | None = None, level: int = logging.INFO) -> None:
    """Log every record of this process as one line naming ``stage`` (and ``configuration``).

    Replaces the root logger's handlers (the KFP executor installs its own) with one that
    writes to stderr in :data:`FORMAT`; Python warnings go through logging too.

    Args:
        stage: The stage (``acquire``, ``tune``, ...).
        configuration: The model configuration's name, for the stages of one configuration.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_StageTag(stage_tag(stage, configuration)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)


def configuration_of_bundle(bundle_dir: str | Path) -> str | None:
    """The model configuration a bundle folder was built from (``metadata.json``'s ``model_name``)."""
    from mushroom.bundle import METADATA
    from mushroom.fileio import read_json

    try:
        return str(read_json(Path(bundle_dir) / METADATA)["model_name"])
    except (OSError, KeyError, ValueError):
        return None


@dataclass(frozen=True)
class StageLine:
    """One line a stage logged (:data:`FORMAT`)."""

    time: str  # HH:MM:SS
    level: str
    logger: str
    tag: str  # "train mobilenetv3-demo" or "acquire"
    message: str

    @property
    def stage(self) -> str:
        return self.tag.split(" ", 1)[0]

    @property
    def configuration(self) -> str | None:
        parts = self.tag.split(" ", 1)
        return parts[1] if len(parts) == 2 else None

    @property
    def text(self) -> str:
        """The message without a repeated ``STAGE [CONFIGURATION]:`` at its start."""
        for prefix in (f"{self.tag}: ", f"{self.stage}: "):
            if self.message.startswith(prefix):
                return self.message[len(prefix):]
        return self.message


def parse_line(line: str) -> StageLine | None:
    """A stage's log line (leading whitespace allowed), or None for anything else."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    return StageLine(m["time"], m["level"], m["logger"], m["tag"], m["message"])


@dataclass(frozen=True)
class Progress:
    done: int
    total: int


def progress_of(line: StageLine) -> Progress | None:
    """How far a train stage or a tune trial is, from its epoch line; else None."""
    m = _PROGRESS.match(line.text)
    if m is None:
        return None
    return Progress(int(m["epoch"]), int(m["epochs"]))


def shown_on_console(line: StageLine) -> bool:
    """Warnings and errors always; INFO lines unless they come from a detail logger."""
    level = logging.getLevelName(line.level)
    if isinstance(level, int) and level >= logging.WARNING:
        return True
    return not any(line.logger == name or line.logger.startswith(name + ".") for name in DETAIL_LOGGERS)


# --------------------------------------------------------------------------- the closing table


CLOSING_HEADER = ["configuration", "variant", "size MB", "latency ms", "val top-1", "top-1", "top-5",
                  "dangerous as edible", "coverage", "chosen"]


def closing_rows(evaluations: list[Evaluation], best: str | None, shipped_variant: str | None) -> list[list[str]]:
    """One row per configuration and TFLite variant; ``chosen`` says CHOSEN or shipped.

    Args:
        evaluations: One per configuration, each recording the variant its bundle ships.
        best, shipped_variant: The configuration the compare stage chose, and the variant it ships.
    """
    from mushroom.formatting import fmt, pct
    from mushroom.report.tables import risk

    rows = []
    for e in evaluations:
        for name, v in e.tflite_variants().items():
            policy = v.calibrated.policy
            role = ("CHOSEN" if (e.model_name, name) == (best, shipped_variant) else
                    "shipped" if e.shipped_variant == name else "")
            rows.append([e.model_name, name, fmt(v.size_mb, 2),
                         fmt(v.latency.threads_1.median_ms, 2) if v.latency else fmt(None),
                         fmt(v.validation.top1 if v.validation else None), fmt(v.top1), fmt(v.top5),
                         risk(policy), pct(policy.coverage), role])
    return rows


def closing_table(evaluations: list[Evaluation], best: str | None, shipped_variant: str | None) -> str:
    """The plain-text table a run ends with (see :func:`closing_rows`) and what its columns mean."""
    rows = closing_rows(evaluations, best, shipped_variant)
    widths = [max(len(str(r[i])) for r in [CLOSING_HEADER, *rows]) for i in range(len(CLOSING_HEADER))]

    def line(cells: list[Any]) -> str:
        return "  ".join(str(c).ljust(w) if i < 2 or i == len(cells) - 1 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(CLOSING_HEADER), line(["-" * w for w in widths]), *map(line, rows)]
    out.append("latency: median, 1 thread. val top-1: the validation split, where the choice is made (the "
               "shipped variant, under the dangerous-as-edible target); top-1, top-5, dangerous as edible and "
               "coverage: the test split.")
    return "\n".join(out)


# --------------------------------------------------------------------------- where things are, and what to try


def run_folder_of(path: str | Path) -> Path | None:
    """The kfp.local run folder (``PIPELINE_ROOT/<run name>``) a task's output lies in: the ancestor
    that holds the acquire task's output; None when there is none (a cluster run's artifacts)."""
    for folder in Path(path).resolve().parents:
        if (folder / "acquire-dataset" / "dataset").is_dir():
            return folder
    return None


@dataclass(frozen=True)
class DemoPhoto:
    """A photo of a run's test split (no model of the run trained on it) and what it shows."""

    path: Path
    scientific_name: str
    common_name: str
    synthetic: bool  # drawn by the synthetic source: not a photo of a mushroom

    @property
    def description(self) -> str:
        what = "a synthetic drawing" if self.synthetic else "a photo"
        common = f" ({self.common_name})" if self.common_name else ""
        return f"{what} of {self.scientific_name}{common} from the test split, which no model trained on"


def demo_photo(run_folder: str | Path) -> DemoPhoto | None:
    """The first test-split photo of a kfp.local run's dataset that exists; None if there is none."""
    from mushroom.fileio import read_json
    from mushroom.manifest import DATASET_INFO_NAME, read_dataset_catalog, read_splits

    run_folder = Path(run_folder)
    dataset = run_folder / "acquire-dataset" / "dataset"
    try:
        records = read_splits(run_folder / "split-dataset" / "splits")
        catalog = read_dataset_catalog(dataset)
        source = read_json(dataset / DATASET_INFO_NAME).get("source")
    except (OSError, ValueError, KeyError):
        return None
    for record in records:
        if record.split == "test" and (dataset / record.file).is_file():
            species = catalog.find(record.taxon_id)
            return DemoPhoto(dataset / record.file, species.scientific_name if species else str(record.taxon_id),
                             species.common_name if species else "", source == "synthetic")
    return None


def shown_path(path: str | Path, cwd: str | Path | None = None) -> str:
    """A path as a person types it in ``cwd`` (default: the working folder): relative when it lies
    under it, else absolute; ``gs://`` URIs unchanged. Quoted for a POSIX shell where needed."""
    import shlex

    text = str(path)
    if "://" not in text:
        here = Path(cwd or Path.cwd()).resolve()
        absolute = Path(text).resolve()
        text = str(absolute.relative_to(here)) if absolute.is_relative_to(here) else str(absolute)
    return shlex.quote(text)


def mushroom_command(cwd: str | Path | None = None) -> str:
    """How to call the ``mushroom`` command installed beside this Python, as typed in ``cwd``:
    ``.venv/bin/mushroom`` in a checkout (works whether or not the environment is activated);
    plain ``mushroom`` when this Python has none beside it."""
    script = Path(sys.executable).with_name("mushroom")
    if not script.is_file():
        return "mushroom"
    text = shown_path(script, cwd)
    return text if "/" in text else f"./{text}"


def identify_command(photo: str | Path, bundle: str, cwd: str | Path | None = None) -> str:
    """``mushroom identify PHOTO --bundle BUNDLE`` as a person types it in ``cwd``."""
    return f"{mushroom_command(cwd)} identify {shown_path(photo, cwd)} --bundle {shown_path(bundle, cwd)}"


def closing_locations(evaluations: list[tuple[str, str]], bundles: list[tuple[str, str, str]], published: str,
                      best: str | None, shipped_variant: str | None, cwd: str | Path | None = None) -> list[str]:
    """The lines a run ends with: where each configuration's evaluation and bundle are, what was
    published, the report, and the identify command for the published bundle and one test photo.

    Args:
        evaluations: ``(model name, evaluation.json path)`` per configuration.
        bundles: ``(model name, calibrated bundle folder, the variant it ships)`` per configuration.
        published: The published run folder (a local path or a ``gs://`` URI).
        best, shipped_variant: The configuration the compare stage chose and the variant it ships (None: no
            choice).
        cwd: Where the person types the command (default: the working folder).
    """
    lines = [f"  {name}: evaluation {path}" for name, path in evaluations]
    lines += [f"  {name}: bundle {path} (ships {variant})" for name, path, variant in bundles]
    lines.append(f"Published bundle and evaluation: {published}")
    if best:
        lines.append(f"  the {best} bundle, variant {shipped_variant}: the compare stage's choice")
    if "://" not in published:
        evaluation = Path(published) / "evaluation"
        lines += [f"Report: {evaluation / 'report.html'}", f"Comparison: {evaluation / 'comparison.html'}"]
    photo = next((p for p in (demo_photo(f) for f in {run_folder_of(b) for _, b, _ in bundles} if f) if p), None)
    if photo is not None:
        lines += ["", f"Try the published {best or 'model'} on {photo.description}:",
                  f"  {identify_command(photo.path, published, cwd)}"]
        if photo.synthetic:
            lines.append("  (the data is synthetic: drawings, not mushrooms; the answers on real photos mean nothing)")
    return lines
