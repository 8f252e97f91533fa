"""After a local run (``make demo``): identify one of its test photos with the bundle it published.

    python -m pipelines.identify_demo [OUTPUT] [--verbose]     # OUTPUT: outputs/demo by default

Prints the ``mushroom identify`` command it runs, then runs it: the bundle is the publish
destination ``OUTPUT/published`` (its ``latest`` run), the photo the first photo of that run's
test split (``OUTPUT/pipeline_root/<run>/acquire-dataset/dataset/images/<taxon id>/...``), which
no model of the run trained on. ``make identify-demo`` runs it for ``outputs/demo``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mushroom.console import demo_photo, identify_command, shown_path


def find_run_folder(output: Path) -> Path | None:
    """The pipeline-root folder of the run ``OUTPUT/published/latest`` names; else the newest run."""
    from mushroom.fileio import read_json
    from mushroom.publish import read_latest

    root = output / "pipeline_root"
    try:
        latest = read_latest(str(output / "published"))
        run_json = output / "published" / latest.run / "run.json"
        name = latest.run_name or (read_json(run_json).get("run_name") if run_json.is_file() else None)
        if name and (root / name / "acquire-dataset").is_dir():
            return root / name
    except (OSError, ValueError):
        pass
    runs = sorted((p for p in root.glob("*") if (p / "acquire-dataset").is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", default="outputs/demo",
                        help="the run's output folder (python -m pipelines.run ... --output), default outputs/demo")
    parser.add_argument("--verbose", action="store_true", help="pass --verbose to identify (calibration, scores)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    published = output / "published"
    run = find_run_folder(output)
    photo = demo_photo(run) if run is not None else None
    if photo is None or not (published / "latest").is_file():
        print(f"error: no finished local run with a published bundle under {shown_path(output)}; "
              "run `make demo` first", file=sys.stderr)
        return 2
    command = identify_command(photo.path, str(published))
    print(f"Identifying {photo.description}, with the bundle the run published:")
    print(f"$ {command}{' --verbose' if args.verbose else ''}\n", flush=True)
    from mushroom.cli import main as mushroom

    return mushroom(["identify", str(photo.path), "--bundle", str(published), *(["--verbose"] * args.verbose)])


if __name__ == "__main__":
    sys.exit(main())
