"""The log of a local run: the console it shows (:class:`RunConsole`) and per-task times from it.

    python -m pipelines.runlog outputs/container-demo/run.log

``python -m pipelines.run`` writes every line of a run to its full log and shows a digest on the
console (:class:`RunConsole`). This module's command reads a full log back:

kfp.local logs ``HH:MM:SS.mmm - INFO - Executing task 'NAME'`` and ``... Task 'NAME' finished
with status SUCCESS`` (``... Task NAME cache hit (key=...)`` for a task its cache served, which does
not run); its DockerRunner prints ``Found image 'REF'`` (or ``Pulling image``) for
each task it starts, and each stage logs ``STAGE: finished in N.Ns`` from inside.
Tasks of one name that overlap (ParallelFor) are paired first in, first out, so their
individual times may be swapped; their sum is exact. A task whose end the log lacks is
listed without a time (kfp.local alone loses such lines when tasks run in parallel;
``pipelines.run`` keeps them).
"""

from __future__ import annotations

import argparse
import builtins
import re
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from mushroom.console import Progress, parse_line, progress_of, shown_on_console

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STAMP = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"
_START = re.compile(_STAMP + r" - INFO - Executing task '([^']+)'")
_END = re.compile(_STAMP + r" - \w+ - Task '([^']+)' finished with status (\w+)")
_CACHED = re.compile(_STAMP + r" - INFO - Task (\S+) cache hit")
_IMAGE = re.compile(r"^\s*(?:Found image|Pulling image) '([^']+)'")
# mushroom's own log format (a stage's lines carry "[STAGE CONFIGURATION] "), or the KFP executor's.
_STAGE = re.compile(r"(?: mushroom| INFO\]): (?:\[([^\]]+)\] )?(.+?): finished in ([0-9.]+)s$")


@dataclass
class RunLog:
    """What a local run's log says about its tasks."""

    tasks: list[tuple[str, float | None, str]] = field(default_factory=list)  # (task, seconds, status)
    started: int = 0  # "Executing task" lines
    cached: list[str] = field(default_factory=list)  # tasks kfp.local's cache served (not run)
    docker_images: list[str] = field(default_factory=list)  # one per task DockerRunner started
    stages: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds inside the task)

    def by_task(self) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for name, seconds, _ in self.tasks:
            out.setdefault(name, []).append(seconds)
        return out


def _seconds(match: re.Match) -> float:
    h, m, s, ms = (int(g) for g in match.groups()[:4])
    return h * 3600 + m * 60 + s + ms / 1000


def parse_run_log(lines) -> RunLog:
    """Parse a kfp.local run log (ANSI colours allowed)."""
    result = RunLog()
    open_tasks: dict[str, list[float]] = {}
    previous = None
    day = 0.0  # the log has times of day only: count midnights
    for raw in lines:
        line = _ANSI.sub("", raw.rstrip("\n"))
        if m := _START.search(line) or _END.search(line):
            now = _seconds(m) + day
            if previous is not None and now < previous - 12 * 3600:
                day, now = day + 86400, now + 86400
            previous = now
            if m.re is _START:
                result.started += 1
                open_tasks.setdefault(m.group(5), []).append(now)
            elif open_tasks.get(m.group(5)):
                result.tasks.append((m.group(5), now - open_tasks[m.group(5)].pop(0), m.group(6)))
        elif m := _CACHED.search(line):
            result.cached.append(m.group(5))
        elif m := _IMAGE.search(line):
            result.docker_images.append(m.group(1))
        elif m := _STAGE.search(line):
            tag, stage = m.group(1), m.group(2)  # "evaluate" logged under the tag "evaluate NAME"
            result.stages.append((tag if tag and tag.startswith(f"{stage} ") else stage, float(m.group(3))))
    result.tasks += [(name, None, "no end line") for name, starts in open_tasks.items() for _ in starts]
    return result


def format_run_log(log: RunLog) -> str:
    """A plain-text summary: tasks with wall times, the images DockerRunner used, stage times."""
    lines = ["task wall times (process or container start and imports included):"]
    for name, times in log.by_task().items():
        lines.append(f"  {name:<22} {' + '.join('?' if t is None else f'{t:.0f}s' for t in times)}")
    statuses = sorted({status for _, _, status in log.tasks})
    lines.append(f"  {log.started} tasks started, status {', '.join(statuses) or 'none'}")
    if log.cached:
        lines.append(f"  {len(log.cached)} from the cache, not run: {', '.join(log.cached)}")
    if log.docker_images:
        lines.append(f"DockerRunner started {len(log.docker_images)} task containers, image(s): "
                     f"{', '.join(sorted(set(log.docker_images)))}")
    else:
        lines.append("no task ran in a container (no DockerRunner lines)")
    if log.stages:
        lines.append("stage times logged inside the tasks:")
        lines += [f"  {stage:<36} {seconds:.1f}s" for stage, seconds in log.stages]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the console of a run

# Library noise: TensorFlow/absl C++ logging, oneDNN, XNNPACK, CPU feature notes, kfp's local-run notices.
NOISE = re.compile(r"absl::InitializeLog|oneDNN|XNNPACK|cpu_feature_guard|This TensorFlow binary|"
                   r"To enable the following instructions|^[IWE]\d{4} \d\d:\d\d:\d\d|^[IWE]0000 |"
                   r"Looking for component|Loading KFP component|Wrote executor output file|warnings\.warn\(|"
                   r"_warn_local_only_noops|UserWarning|RuntimeWarning|^-{20,}$")
_TAIL_LINES = 30
_BAR = 20
# kfp.local retries a failed task (cluster.stages.<stage>.retries): a person sees why it starts again.
_RETRY = re.compile(r" - \w+ - Task .+ failed \((attempt \d+/\d+)\)\. Retrying in ([\d.]+s)")


@dataclass
class _Stream:
    """What one thread of the run (one kfp task at a time) has written."""

    task: str | None = None
    configuration: str | None = None
    tag: str | None = None  # of the last stage line
    tail: deque = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    failed: bool = False
    json_depth: int = 0  # inside kfp's "Got executor_input:" dump while > 0
    json_expected: bool = False


def _dedent(lines: list[str]) -> list[str]:
    """Lines without the indentation kfp.local gave them all (their own kept)."""
    indent = min((len(line) - len(line.lstrip()) for line in lines if line.strip()), default=0)
    return [line[indent:] for line in lines]


def _json_depth(line: str) -> int:
    """Brackets opened minus closed on one line of JSON (brackets inside strings left out)."""
    depth, in_string, escaped = 0, False, False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth


class RunConsole:
    """The console of a local run: everything goes to the full log, a digest to the terminal.

    While active it stands in for ``sys.stdout`` and ``sys.stderr``, so that kfp.local's task
    logs, the stages' output it streams and Python warnings all pass through it. Every line goes
    to ``log_path`` unchanged. The console gets (unless ``verbose``, which shows everything):
    the lines the stages log (:mod:`mushroom.console`; each names its stage and configuration)
    except detail loggers' INFO lines; not kfp's executor-input dumps, task outputs or library
    noise. Epoch and trial lines are one line each, or on a terminal a progress bar per stage.
    Lines are assembled per thread, so tasks running side by side never mix within a line.

    Args:
        log_path: The full log (created, overwritten).
        console: Where the digest goes (default: ``sys.stdout`` at entry); ``errors`` likewise.
        verbose: Show every line as it comes.
        tty: Draw progress bars (default: whether ``console`` is a terminal).
        tags: Stage tags to align the console's columns to (e.g. ``evaluate mobilenetv3-demo``).
    """

    def __init__(self, log_path: str | Path, console: TextIO | None = None, errors: TextIO | None = None,
                 verbose: bool = False, tty: bool | None = None, tags: list[str] | None = None):
        self.log_path = Path(log_path)
        self._console, self._errors = console, errors
        self.verbose = verbose
        self._tty = tty
        self._width = max([len(t) for t in tags or []] + [8])
        self._lock = threading.RLock()
        self._partial: dict[int, str] = {}
        self._streams: dict[int, _Stream] = {}
        self._progress: dict[str, Progress] = {}
        self._status = False
        self._log = None
        self.shown = 0  # lines the console got

    # --- file-like, for sys.stdout / sys.stderr
    encoding = "utf-8"

    def write(self, text: str) -> int:
        with self._lock:
            tid = threading.get_ident()
            pieces = (self._partial.pop(tid, "") + text).split("\n")
            if pieces[-1]:
                self._partial[tid] = pieces[-1]
            for line in pieces[:-1]:
                self._line(tid, line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._log:
                self._log.flush()
            self.console.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:  # for code that hands the stream to a subprocess
        return self.console.fileno()

    # --- context
    def __enter__(self) -> RunConsole:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in __exit__
        self._console = self._console or sys.stdout
        self._errors = self._errors or sys.stderr
        if self._tty is None:
            self._tty = bool(getattr(self._console, "isatty", lambda: False)())
        self._saved = (sys.stdout, sys.stderr, builtins.print)
        sys.stdout = sys.stderr = self
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            for tid, rest in list(self._partial.items()):
                self._line(tid, rest)
            self._partial.clear()
            self._progress.clear()
            self._clear_status()
        # kfp.local swaps builtins.print per task; tasks ending out of order can leave it indenting.
        sys.stdout, sys.stderr, builtins.print = self._saved
        self._log.close()

    @property
    def console(self) -> TextIO:
        return self._console or sys.stdout

    # --- what this program itself says
    def say(self, text: str = "", err: bool = False) -> None:
        """Show ``text`` on the console (stderr with ``err``) and keep it in the log."""
        with self._lock:
            for line in text.split("\n"):
                if self._log:
                    self._log.write(line + "\n")
                self._show(line, self._errors if err else self.console)
            if self._log:
                self._log.flush()

    def stage_line(self, tag: str, text: str) -> None:
        """Show a line about a stage as the stages' own lines look (``HH:MM:SS  TAG  text``); log it too."""
        self.say(f"{time.strftime('%H:%M:%S')}  {tag:<{self._width}}  {text}")

    def failures(self) -> list[tuple[str | None, str | None, list[str]]]:
        """``(task, configuration, last lines)`` of every task that failed, noise left out."""
        with self._lock:
            return [(s.task, s.configuration, _dedent(list(s.tail))) for s in self._streams.values() if s.failed]

    # --- the routing
    def _line(self, tid: int, raw: str) -> None:
        if self._log:
            self._log.write(raw + "\n")
        stream = self._streams.setdefault(tid, _Stream())
        plain = _ANSI.sub("", raw).strip()
        if self.verbose:
            self._show(raw.rstrip(), self.console)
        if stream.json_depth > 0 or (stream.json_expected and plain.startswith("{")):
            stream.json_expected = False
            stream.json_depth += _json_depth(plain)
            return
        stream.json_expected = plain.endswith("Got executor_input:")
        if m := _START.search(plain):
            self._end_progress(stream)
            stream.task, stream.configuration, stream.tag, stream.failed = m.group(5), None, None, False
            stream.tail.clear()
            return
        if m := _END.search(plain):
            self._end_progress(stream)
            stream.failed = m.group(6) != "SUCCESS"
            return
        if (m := _RETRY.search(plain)) and not self.verbose:
            tag = stream.tag or stream.task or ""
            self._show(f"{plain[:8]}  {tag:<{self._width}}  failed ({m.group(1)}); retrying in {m.group(2)}",
                       self.console)
            return
        if not plain or stream.json_expected or NOISE.search(plain):
            return
        if not stream.failed:  # a failed task's tail ends where it failed
            stream.tail.append(_ANSI.sub("", raw).rstrip())
        line = parse_line(plain)
        if line is None or self.verbose:
            return
        stream.configuration, stream.tag = line.configuration or stream.configuration, line.tag
        progress = progress_of(line)
        if progress and self._tty:
            self._progress[line.tag] = progress
            self._draw_status()
        elif shown_on_console(line):
            if line.text.startswith("finished in "):
                self._progress.pop(line.tag, None)
            level = "" if line.level == "INFO" else f"{line.level.lower()}: "
            self._show(f"{line.time}  {line.tag:<{self._width}}  {level}{line.text}", self.console)

    def _end_progress(self, stream: _Stream) -> None:
        if stream.tag in self._progress:
            del self._progress[stream.tag]
            self._draw_status()

    def _show(self, text: str, out: TextIO) -> None:
        self._clear_status()
        out.write(text + "\n")
        out.flush()
        self.shown += 1
        self._draw_status()

    def _clear_status(self) -> None:
        if self._status:
            self.console.write("\r\x1b[K")
            self._status = False

    def _draw_status(self) -> None:
        if not self._tty or not self._progress:
            self._clear_status()
            return
        parts = []
        for tag, p in self._progress.items():
            filled = round(_BAR * min(p.done, p.total) / max(p.total, 1))
            parts.append(f"{tag} [{'#' * filled}{'-' * (_BAR - filled)}] {p.done}/{p.total}")
        width = shutil.get_terminal_size((120, 24)).columns - 1
        self.console.write("\r\x1b[K" + "   ".join(parts)[:width])
        self.console.flush()
        self._status = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="the saved output of python -m pipelines.run")
    parser.add_argument("--require-docker", action="store_true",
                        help="exit 1 unless DockerRunner started a container for every task")
    args = parser.parse_args(argv)
    log = parse_run_log(Path(args.log).read_text(encoding="utf-8", errors="replace").splitlines())
    print(format_run_log(log))
    if not log.started:
        print(f"error: no task started in {args.log}", file=sys.stderr)
        return 1
    if args.require_docker and len(log.docker_images) < log.started:
        print(f"error: {log.started} tasks started but DockerRunner started {len(log.docker_images)} containers",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
