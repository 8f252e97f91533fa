"""Benchmark ``mushroom identify``: cold start and per-photo latency on this machine's CPU.

For each bundle (the demo bundle, and an EfficientNetV2-S-sized int8 model at 224 px with
``--efficientnetv2-s``) it measures, side by side in one run:

- import: ``import mushroom.identify`` in a fresh process (``python -X importtime``, the median
  of ``--cold-runs`` runs) beside ``import numpy, PIL.Image`` alone, the floor no identify can
  go below,
- cold start: a fresh ``mushroom identify PHOTO --bundle B --json`` process, from its start
  to its answer (the median of ``--cold-runs`` runs, and the first run),
- per photo: ``Identifier.identify`` on phone-sized JPEGs in one warm process (decode,
  EXIF, resize, int8 inference, calibration, answer), median and p90, with one interpreter
  thread and with every core this process may use, and the model invocation alone.

Targets (2 cores): the import under 0.2 s, cold start under 1.5 s, under 50 ms a photo.

    python benchmarks/identify.py [--bundle outputs/demo/published] [--efficientnetv2-s]

The EfficientNetV2-S model is random-init (weights do not change latency), converted to
int8 with a few random representative images, and cached under ``outputs/benchmarks/``;
building it needs TensorFlow (the ``pipeline`` extra), running it does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mushroom.identify import Identifier

REPO = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = REPO / "outputs" / "demo" / "published"
CACHE = REPO / "outputs" / "benchmarks"
IMPORT_TARGET_S = 0.2
COLD_START_TARGET_S = 1.5
PER_PHOTO_TARGET_MS = 50.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(DEMO_BUNDLE),
                        help="demo bundle folder or publish destination (default: %(default)s)")
    parser.add_argument("--efficientnetv2-s", action="store_true",
                        help="also benchmark an EfficientNetV2-S-sized int8 model at 224 px (built once)")
    parser.add_argument("--photos", type=int, default=30, help="photos per latency measurement")
    parser.add_argument("--photo-size", default="1600x1200", help="width x height of the test JPEGs")
    parser.add_argument("--cold-runs", type=int, default=5, help="fresh processes per cold-start measurement")
    parser.add_argument("--cache-dir", default=str(CACHE), help="where the built model is cached")
    return parser.parse_args(argv)


def make_photos(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Phone-like JPEGs: smooth colour fields with texture, ``quality=90``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        colours = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        coarse = Image.fromarray(colours).resize(size, Image.Resampling.BICUBIC)
        noise = rng.normal(0, 12, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo-{i:03d}.jpg"
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def build_efficientnetv2_s(cache_dir: Path, image_size: int = 224, num_classes: int = 51) -> Path:
    """An EfficientNetV2-S int8 bundle (random weights) over the first ``num_classes`` species."""
    bundle = cache_dir / f"efficientnetv2-s-{image_size}-int8"
    if (bundle / "model_int8.tflite").is_file():
        return bundle
    import keras

    from mushroom import variants
    from mushroom.bundle import write_bundle
    from mushroom.models import build_model
    from mushroom.quantize import convert, export_saved_model
    from mushroom.species import Catalog, load_catalog

    print(f"building {bundle.name} (once; a few minutes)...", file=sys.stderr, flush=True)
    catalog = load_catalog()
    catalog = Catalog(catalog.species[:num_classes])
    keras.utils.set_random_seed(0)
    model = build_model("efficientnetv2-s", len(catalog), image_size, "none")
    representative = np.random.default_rng(0).integers(0, 256, (8, image_size, image_size, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="mushroom-bench-") as tmp:
        flatbuffer = convert(export_saved_model(model, Path(tmp) / "saved_model"), variants.FULL_INTEGER,
                             representative)
    config = {"model_name": "efficientnetv2-s-benchmark", "architecture": "efficientnetv2-s",
              "image_size": image_size, "weights": "none (random: latency only)"}
    write_bundle(bundle, {variants.FULL_INTEGER: flatbuffer}, catalog, config)
    return bundle


def import_seconds(statement: str, modules: tuple[str, ...]) -> float:
    """Seconds ``modules`` take to import in a fresh process running ``statement`` (``-X importtime``,
    cumulative, summed)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                         check=True).stderr
    cumulative = {row.split("|")[2].strip(): int(row.split("|")[1]) for row in err.splitlines()
                  if row.startswith("import time:") and "[us]" not in row}
    return sum(cumulative[m] for m in modules) / 1e6


def print_imports(runs: int) -> None:
    """``import mushroom.identify`` beside numpy and Pillow alone, measured in turns."""
    identify, floor = [], []
    for _ in range(runs):
        identify.append(import_seconds("import mushroom.identify", ("mushroom.identify",)))
        floor.append(import_seconds("import numpy, PIL.Image", ("numpy", "PIL.Image")))
    i, f = statistics.median(identify), statistics.median(floor)
    print(f"\nimport mushroom.identify: {i * 1e3:.0f} ms (median of {runs} fresh processes; numpy + PIL.Image "
          f"alone {f * 1e3:.0f} ms, x{i / f:.2f}); target < {IMPORT_TARGET_S * 1e3:.0f} ms: "
          f"{'met' if i < IMPORT_TARGET_S else 'MISSED'}")


def cold_start(bundle: Path, photo: Path, runs: int) -> list[float]:
    """Seconds from a fresh ``mushroom identify`` process's start to its answer, per run."""
    script = Path(sys.executable).with_name("mushroom")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "mushroom.cli"]
    command += ["identify", str(photo), "--bundle", str(bundle), "--json"]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
        if result.returncode != 0 or not json.loads(result.stdout)["results"][0]["ok"]:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr}")
    return times


def per_photo(bundle: Path, photos: list[Path], threads: int) -> dict[str, float]:
    """Median and p90 milliseconds a photo, end to end and for the model invocation alone."""
    identifier = Identifier(bundle, num_threads=threads)
    for p in photos[:2]:
        identifier.identify(p)  # warm-up: first-invoke allocations
    total = []
    for p in photos:
        start = time.perf_counter()
        identifier.identify(p)
        total.append((time.perf_counter() - start) * 1e3)
    pixels = np.zeros((1, identifier.image_size, identifier.image_size, 3), np.uint8)
    model = []
    for _ in photos:
        start = time.perf_counter()
        identifier.classifier.predict(pixels)
        model.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(total), "p90": float(np.percentile(total, 90)),
            "model": statistics.median(model)}


def bench(name: str, bundle: Path, photos: list[Path], cold_runs: int, cores: int) -> dict:
    identifier = Identifier(bundle)
    model_mb = identifier.classifier.path.stat().st_size / 1e6
    cold = cold_start(identifier.bundle.root, photos[0], cold_runs)
    row = {"name": name, "px": identifier.image_size, "mb": model_mb,
           "cold_first": cold[0], "cold_median": statistics.median(cold)}
    row["threads"] = {t: per_photo(identifier.bundle.root, photos, t) for t in sorted({1, cores})}
    return row


def print_table(rows: list[dict], cores: int, photo_size: str) -> None:
    print(f"\nmushroom identify on {cores} core(s), {photo_size} JPEGs "
          f"(per photo = decode + preprocess + int8 model + answer; 'model' = invocation only)\n")
    head = f"{'model':<28} {'px':>4} {'MB':>6} {'cold start':>17}"
    thread_cols = sorted({1, cores})
    for t in thread_cols:
        head += f"  {f'{t} thread(s): median / p90 / model ms':>36}"
    print(head)
    for r in rows:
        line = (f"{r['name']:<28} {r['px']:>4} {r['mb']:>6.1f} "
                f"{r['cold_median']:>6.2f} s (1st {r['cold_first']:.2f})")
        for t in thread_cols:
            s = r["threads"][t]
            line += f"  {s['median']:>16.1f} / {s['p90']:>5.1f} / {s['model']:>7.1f}"
        print(line)
    print(f"\ntargets: cold start < {COLD_START_TARGET_S} s, < {PER_PHOTO_TARGET_MS:.0f} ms a photo")
    for r in rows:
        best = min(s["median"] for s in r["threads"].values())
        cold_ok = "met" if r["cold_median"] < COLD_START_TARGET_S else "MISSED"
        photo_ok = "met" if best < PER_PHOTO_TARGET_MS else "MISSED"
        print(f"  {r['name']}: cold start {cold_ok}, per photo {photo_ok} (best median {best:.1f} ms)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    width, height = (int(v) for v in args.photo_size.lower().split("x"))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    bundles = []
    demo = Path(args.bundle)
    if demo.exists():
        bundles.append(("demo bundle", demo))
    else:
        print(f"no demo bundle at {demo} (run `make demo` or pass --bundle); skipping it", file=sys.stderr)
    if args.efficientnetv2_s:
        bundles.append(("EfficientNetV2-S int8", build_efficientnetv2_s(Path(args.cache_dir))))
    if not bundles:
        print("nothing to benchmark", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mushroom-bench-photos-") as tmp:
        photos = make_photos(Path(tmp), args.photos, (width, height))
        rows = [bench(name, bundle, photos, args.cold_runs, cores) for name, bundle in bundles]
    print_table(rows, cores, args.photo_size)
    print_imports(args.cold_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
