"""Run a configuration locally with ``kfp.local`` (SubprocessRunner, no containers).

    python -m pipelines.run pipelines/configs/demo.yaml [--output outputs/demo]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mushroom import variants
from mushroom.bundle import METADATA
from mushroom.config import ConfigError, load_config
from mushroom.evaluation import read_evaluation


def run_local(config_path: str | Path, output_dir: str | Path) -> dict:
    """Run the whole pipeline locally; return where the results are.

    Args:
        config_path: A YAML run configuration.
        output_dir: Holds ``pipeline_root`` (every artifact) and the published bundle.

    Returns:
        ``{"published": URI, "evaluations": [paths], "bundles": [paths]}``.
    """
    from kfp import local

    from pipelines.pipeline import pipeline_arguments, pipeline_for

    config = load_config(config_path)  # fails before any work on a bad configuration
    output_dir = Path(output_dir).resolve()
    root = output_dir / "pipeline_root"
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    args = pipeline_arguments(config)
    destination = config.publish.destination
    if "://" not in destination and not Path(destination).is_absolute():
        args["publish_destination"] = str(output_dir / destination)
    started = time.time()
    task = pipeline_for(config)(**args)
    evaluations = sorted(p for p in root.rglob("evaluation.json") if p.stat().st_mtime >= started
                         and "evaluate-model" in str(p))
    bundles = sorted(p.parent for p in root.rglob(METADATA) if p.stat().st_mtime >= started
                     and "calibrated_bundle" in str(p))
    return {"published": task.output, "evaluations": [str(p) for p in evaluations],
            "bundles": [str(p) for p in bundles]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run configuration (YAML), e.g. pipelines/configs/demo.yaml")
    parser.add_argument("--output", default=None, help="output folder (default: outputs/<config name>)")
    args = parser.parse_args(argv)
    try:
        name = load_config(args.config).name
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.monotonic()
    result = run_local(args.config, args.output or Path("outputs") / name)
    print(f"\nPipeline finished in {time.monotonic() - start:.0f}s.")
    for path in result["evaluations"]:
        e = read_evaluation(path)
        headline = ", ".join(f"{name} top-1 {e.variant(name).top1:.3f}" for name in variants.REQUIRED
                             if e.variant(name) is not None)
        print(f"  {e.model_name}: {headline}  ({path})")
        print(f"    report: {Path(path).parent / 'report.html'}")
    for path in result["bundles"]:
        print(f"  bundle: {path}")
    print(f"Published bundle and evaluation: {result['published']}")
    if "://" not in result["published"]:
        published = Path(result["published"]) / "evaluation"
        print(f"Report: {published / 'report.html'}\nComparison: {published / 'comparison.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
