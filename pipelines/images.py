"""Print the images a configuration's stages run on a cluster, one per line (each once).

    python -m pipelines.images pipelines/configs/demo.yaml
    MUSHROOM_IMAGE=reg/mushroom:1.2.0 python -m pipelines.images pipelines/configs/paper.yaml

The same images the compiled YAML names (``make compile``): the GPU image for stages that
request accelerators, the CPU image for the others; ``make kind-load`` builds and loads these.
"""

from __future__ import annotations

import argparse
import sys

from mushroom.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="run configuration (YAML)")
    parser.add_argument("--by-stage", action="store_true", help="print 'stage image' lines instead")
    args = parser.parse_args(argv)
    from components.image import project_images

    try:
        by_stage = project_images().by_stage(load_config(args.config).cluster.stages)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lines = [f"{stage} {image}" for stage, image in by_stage.items()] if args.by_stage else list(
        dict.fromkeys(by_stage.values()))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
