"""The ``mushroom`` command.

    mushroom species                      list the catalog (class order, edibility)
    mushroom dataset CONFIG OUT_DIR       build a config's dataset folder without the pipeline
    mushroom --version
"""

from __future__ import annotations

import argparse
import sys

from mushroom import __version__


def _cmd_species(args: argparse.Namespace) -> int:
    from mushroom.species import load_catalog

    catalog = load_catalog()
    print(f"{'#':>3}  {'taxon':>7}  {'scientific name':<30} {'common name':<28} {'edibility':<10} caution")
    for i, s in enumerate(catalog):
        print(f"{i:>3}  {s.taxon_id:>7}  {s.scientific_name:<30} {s.common_name:<28} {s.edibility:<10} {s.caution}")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    from mushroom import stages
    from mushroom.config import load_config

    config = load_config(args.config)
    stages.setup_logging()
    metrics = stages.acquire(config.dataset.model_dump(mode="json", exclude_none=True), config.seed, args.out_dir)
    print(f"dataset: {int(metrics['photos'])} photos of {int(metrics['species'])} species in {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mushroom", description="quantized-mushroom command line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("species", help="list the species catalog in class order")
    p.set_defaults(func=_cmd_species)
    p = sub.add_parser("dataset", help="build the dataset folder of a configuration")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("out_dir", help="dataset folder to write")
    p.set_defaults(func=_cmd_dataset)
    return parser


def main(argv: list[str] | None = None) -> int:
    from mushroom.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
