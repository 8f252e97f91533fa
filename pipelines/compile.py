"""Compile a configuration's pipeline to KFP IR YAML.

    python -m pipelines.compile pipelines/configs/paper.yaml pipelines/compiled/paper.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mushroom.config import ConfigError, load_config


def compile_pipeline(config_path: str | Path, output: str | Path) -> Path:
    """Compile with the configuration's values as the pipeline's default parameters."""
    from kfp import compiler

    from pipelines.pipeline import pipeline_arguments, pipeline_for

    config = load_config(config_path)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_for(config), str(output), pipeline_parameters=pipeline_arguments(config))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("output")
    args = parser.parse_args(argv)
    try:
        path = compile_pipeline(args.config, args.output)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"compiled {args.config} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
