"""Per-task times from the log of a local run (``python -m pipelines.run ... | tee LOG``).

    python -m pipelines.runlog outputs/container-demo/run.log

kfp.local logs ``HH:MM:SS.mmm - INFO - Executing task 'NAME'`` and ``... Task 'NAME' finished
with status SUCCESS``; its DockerRunner prints ``Found image 'REF'`` (or ``Pulling image``) for
each task it starts, and each stage logs ``STAGE: finished in N.Ns`` from inside.
Tasks of one name that overlap (ParallelFor) are paired first in, first out, so their
individual times may be swapped; their sum is exact. A task whose end the log lacks is
listed without a time (kfp.local alone loses such lines when tasks run in parallel;
``pipelines.run`` keeps them).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STAMP = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"
_START = re.compile(_STAMP + r" - INFO - Executing task '([^']+)'")
_END = re.compile(_STAMP + r" - \w+ - Task '([^']+)' finished with status (\w+)")
_IMAGE = re.compile(r"^\s*(?:Found image|Pulling image) '([^']+)'")
# mushroom's own log format, or the KFP executor's once it has configured logging.
_STAGE = re.compile(r"(?: mushroom| INFO\]): (.+?): finished in ([0-9.]+)s$")


@dataclass
class RunLog:
    """What a local run's log says about its tasks."""

    tasks: list[tuple[str, float | None, str]] = field(default_factory=list)  # (task, seconds, status)
    started: int = 0  # "Executing task" lines
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
        elif m := _IMAGE.search(line):
            result.docker_images.append(m.group(1))
        elif m := _STAGE.search(line):
            result.stages.append((m.group(1), float(m.group(2))))
    result.tasks += [(name, None, "no end line") for name, starts in open_tasks.items() for _ in starts]
    return result


def format_run_log(log: RunLog) -> str:
    """A plain-text summary: tasks with wall times, the images DockerRunner used, stage times."""
    lines = ["task wall times (process or container start and imports included):"]
    for name, times in log.by_task().items():
        lines.append(f"  {name:<22} {' + '.join('?' if t is None else f'{t:.0f}s' for t in times)}")
    statuses = sorted({status for _, _, status in log.tasks})
    lines.append(f"  {log.started} tasks started, status {', '.join(statuses) or 'none'}")
    if log.docker_images:
        lines.append(f"DockerRunner started {len(log.docker_images)} task containers, image(s): "
                     f"{', '.join(sorted(set(log.docker_images)))}")
    else:
        lines.append("no task ran in a container (no DockerRunner lines)")
    if log.stages:
        lines.append("stage times logged inside the tasks:")
        lines += [f"  {stage:<36} {seconds:.1f}s" for stage, seconds in log.stages]
    return "\n".join(lines)


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
