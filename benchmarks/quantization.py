"""Size, CPU latency and top-1 agreement of every TFLite variant, as ratios to float32.

Two modes:

* architectures (default): builds EfficientNetV2-B0/S/M, ResNet50 and MobileNetV3-Large at
  224 px (ImageNet weights when they can be downloaded, else random weights with a warning:
  then agreement figures only show plumbing), converts every variant with the project's
  quantize stage code, and measures them on a fixed, seeded image set;
* a trained bundle (``--bundle DIR --images FOLDER``): measures the bundle's variants on an
  ImageFolder tree (``<species>/*.jpg``), reporting real top-1 accuracy too.

    python benchmarks/quantization.py --architectures efficientnetv2-b0 mobilenetv3-large
    python benchmarks/quantization.py --bundle outputs/demo/published/<run>/bundle --images photos/
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from mushroom import backbones, variants
from mushroom.latency import LatencySetup
from mushroom.tflite import TFLiteClassifier, measure_latency


def _synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """A fixed image set: synthetic mushrooms drawn by the project's generator."""
    from mushroom.config import SyntheticSourceConfig
    from mushroom.datasets import load_images
    from mushroom.sources.synthetic import generate_synthetic
    from mushroom.species import load_catalog

    catalog = load_catalog()
    per_species = max(1, -(-n // 10))
    with tempfile.TemporaryDirectory() as tmp:
        subset = catalog.subset([s.taxon_id for s in catalog.species[:10]])
        records = generate_synthetic(SyntheticSourceConfig(photos_per_species=max(per_species, 6),
                                                           image_size=size), subset, Path(tmp), seed)
        return load_images([str(Path(tmp) / r.file) for r in records[:n]], size)


def _row(name: str, path: Path, images: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
         runs: int) -> dict:
    probs = TFLiteClassifier(path).predict(images)
    pred = probs.argmax(1)
    row = {
        "variant": name,
        "size_mb": path.stat().st_size / 1e6,
        "agreement": float(np.mean(pred == reference)),
        "ms_1": measure_latency(path, images[0], num_threads=1, runs=runs)["median_ms"],
        "ms_all": measure_latency(path, images[0], num_threads=os.cpu_count(), runs=runs)["median_ms"],
    }
    if labels is not None:
        row["top1"] = float(np.mean(pred == labels))
    return row


def _print(title: str, rows: list[dict]) -> None:
    base = next(r for r in rows if r["variant"] == "float32")
    has_top1 = "top1" in base
    print(f"\n## {title}\n")
    head = "| variant | size MB | x float32 | ms 1 thread | x | ms all cores | x | agreement |"
    print(head + (" top-1 |" if has_top1 else ""))
    print("|" + "---|" * (8 + has_top1))
    for r in rows:
        line = (f"| {r['variant']} | {r['size_mb']:.2f} | {r['size_mb'] / base['size_mb']:.2f} | {r['ms_1']:.2f} | "
                f"{r['ms_1'] / base['ms_1']:.2f} | {r['ms_all']:.2f} | {r['ms_all'] / base['ms_all']:.2f} | "
                f"{r['agreement']:.3f} |")
        print(line + (f" {r['top1']:.3f} |" if has_top1 else ""))
    sys.stdout.flush()


def bench_architecture(arch: str, size: int, classes: int, images: np.ndarray, variants: list[str],
                       runs: int, weights: str) -> list[dict]:
    import keras

    from mushroom.models import build_model
    from mushroom.quantize import quantize_model

    keras.utils.set_random_seed(0)
    try:
        model = build_model(arch, classes, size, weights)
    except Exception as err:  # noqa: BLE001 - offline: no ImageNet download
        print(f"[{arch}] ImageNet weights unavailable ({type(err).__name__}); using random weights: "
              "sizes and latencies are real, agreement figures are not (an untrained model's top-1 is noise); "
              "use --bundle/--images for accuracy", file=sys.stderr)
        model = build_model(arch, classes, size, "none")
    keras_pred = model.predict(images.astype(np.float32), verbose=0).argmax(1)
    half = len(images) // 2
    models, report = quantize_model(model, images[:half], images[half:], keras_pred[half:], variants,
                                    latency=LatencySetup(runs=runs))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in models.items():
            path = Path(tmp) / f"{name}.tflite"
            path.write_bytes(data)
            rows.append(_row(name, path, images[half:], keras_pred[half:], None, runs))
    _print(f"{arch} at {size} px ({classes} classes); stage would choose: {report['reason']}", rows)
    return rows


def bench_bundle(bundle_dir: Path, image_root: Path, runs: int) -> list[dict]:
    from mushroom.bundle import read_bundle
    from mushroom.datasets import load_images

    bundle = read_bundle(bundle_dir)
    paths, labels = [], []
    for folder in sorted(p for p in image_root.iterdir() if p.is_dir()):
        species = bundle.catalog.find(folder.name)  # scientific name, slug or taxon id
        if species is None:
            print(f"skipping {folder}: not one of the bundle's species", file=sys.stderr)
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        paths += [str(p) for p in files]
        labels += [bundle.catalog.index_of(species.taxon_id)] * len(files)
    if not paths:
        raise SystemExit(f"no photos under {image_root} in folders named after the bundle's species")
    images = load_images(paths, bundle.image_size)
    labels = np.array(labels)
    reference = TFLiteClassifier(bundle.model_path("float32")).predict(images).argmax(1)
    rows = [_row(v, bundle.model_path(v), images, reference, labels, runs) for v in bundle.variants]
    _print(f"bundle {bundle.metadata['model_name']} on {len(paths)} photos from {image_root}", rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=backbones.names(), choices=backbones.names())
    parser.add_argument("--variants", nargs="+", default=variants.names(), choices=variants.names())
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=51)
    parser.add_argument("--images", type=Path, help="with --bundle: an ImageFolder tree of labelled photos")
    parser.add_argument("--num-images", type=int, default=64, help="fixed synthetic image set size")
    parser.add_argument("--bundle", type=Path, help="measure a trained bundle instead of architectures")
    parser.add_argument("--weights", default="imagenet", choices=["imagenet", "none"])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per latency figure")
    args = parser.parse_args(argv)
    print(f"# TFLite variants on {os.cpu_count()} CPU core(s); ratios to float32 measured in this run")
    if args.bundle:
        if not args.images:
            parser.error("--bundle needs --images")
        bench_bundle(args.bundle, args.images, args.runs)
        return 0
    images = _synthetic_images(args.num_images, args.size, seed=0)
    for arch in args.architectures:
        bench_architecture(arch, args.size, args.classes, images, args.variants, args.runs, args.weights)
    return 0


if __name__ == "__main__":
    sys.exit(main())
