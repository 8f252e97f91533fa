"""Compile a configuration's pipeline to KFP IR YAML, for Kubeflow Pipelines or Vertex AI.

    python -m pipelines.compile pipelines/configs/paper.yaml pipelines/compiled/paper.yaml
    python -m pipelines.compile pipelines/configs/paper.yaml pipelines/compiled/paper.vertex.yaml --target vertex

The KFP flavour is two YAML documents (the pipeline, then the kfp-kubernetes platform config:
node selectors, tolerations, scratch volumes, timeouts, security context). The Vertex flavour is
one document with Vertex accelerator enums and CPU/memory limits, as aiplatform.PipelineJob loads it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from mushroom.config import ConfigError, load_config


def _stable_header(text: str) -> str:
    """Re-render the header comment's ``[Default: ...]`` values with sorted keys.

    kfp writes them from protobuf maps, whose order changes from process to process; the
    YAML body itself is already sorted. Stable bytes let CI diff the committed YAML.
    """
    import yaml

    spec = next(yaml.safe_load_all(text))
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = re.match(r"^(#\s+)(\w+)(: \w+) \[Default: .*\]$", line)
        if match and match.group(2) in params:
            value = json.dumps(params[match.group(2)]["defaultValue"], sort_keys=True)
            lines[i] = f"{match.group(1)}{match.group(2)}{match.group(3)} [Default: {value}]"
    return "\n".join(lines)


def compile_pipeline(config_path: str | Path, output: str | Path, target: str = "kfp") -> Path:
    """Compile with the configuration's values as the pipeline's default parameters.

    Args:
        config_path: The run configuration.
        output: Where the YAML goes.
        target: ``"kfp"`` or ``"vertex"`` (see :func:`pipelines.pipeline.build_pipeline`).

    Raises:
        ConfigError: The configuration is invalid, an image is not pinned, or the target cannot
            run it.
    """
    from kfp import compiler

    from pipelines.pipeline import pipeline_arguments, pipeline_for

    config = load_config(config_path)
    pipeline = pipeline_for(config, target)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output), pipeline_parameters=pipeline_arguments(config, target))
    output.write_text(_stable_header(output.read_text(encoding="utf-8")), encoding="utf-8")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("output")
    parser.add_argument("--target", choices=("kfp", "vertex"), default="kfp",
                        help="kfp: Kubeflow Pipelines on Kubernetes (default); vertex: Vertex AI Pipelines")
    args = parser.parse_args(argv)
    try:
        path = compile_pipeline(args.config, args.output, args.target)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"compiled {args.config} -> {path} ({args.target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
