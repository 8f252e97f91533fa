"""Benchmark the open-set answer and the quality gate on a finished pipeline run (the demo's).

Re-runs the evaluate stage (:func:`mushroom.stages.evaluate`) of one configuration of a run on
its own dataset, with photos of species the model never saw added as the dataset's unknown
species (synthetic ones, drawn like the trained ones, for a synthetic run), then prints, side
by side for every TFLite variant:

- the open-set score chosen on the fitting negatives (validation photos against the noise,
  flat and gradient families and half of the unknown taxa) and the mean AUROC of each
  candidate score, which is why it was chosen;
- known test photos refused (gate off / on), and for each kind of negative: AUROC, FPR at
  95% TPR, refused by the score alone (gate off) and with the quality gate;
- calibration: test NLL before and after the kept temperature;

and what ``mushroom identify`` answers for a blank white image, a flat colour, random noise
and a 1x1 pixel with the re-calibrated bundle.

Then, for the shipped variant and float32, every score side by side (``--compare``, on by
default): AUROC and FPR95 per kind for the probability scores and the feature-space
``mahalanobis`` score (statistics from the train photos, as the evaluate stage fits them), and
the mahalanobis score with other numbers of principal components kept (the bundle stores
:data:`mushroom.openset_fit.FEATURE_COMPONENTS`). A bundle without a feature output (built before
it) gets probability scores only; ``--requantize`` rebuilds the run's bundle from its Keras model
first (into the output folder), which exports the features.

    python benchmarks/openset.py --run outputs/demo/pipeline_root/<run> [--iteration 0] [--unknown 8]

Figures are measured on this machine in one run; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a local run's folder under pipeline_root")
    parser.add_argument("--iteration", type=int, default=0, help="the configuration (ParallelFor iteration)")
    parser.add_argument("--unknown", type=int, default=8, help="unknown species to draw (synthetic runs)")
    parser.add_argument("--photos-per-species", type=int, default=30, help="photos per unknown species")
    parser.add_argument("--out", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--requantize", action="store_true",
                        help="rebuild the bundle from the run's Keras model (old runs: no feature output)")
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the per-score comparison")
    return parser.parse_args(argv)


def _dataset_with_unknowns(run: Path, out: Path, unknown: int, photos: int) -> Path:
    """A copy of the run's dataset folder (photos linked) plus ``unknown`` synthetic unknown species."""
    from mushroom.config import DatasetConfig
    from mushroom.fileio import read_json
    from mushroom.sources import _collect_unknown
    from mushroom.species import load_catalog

    source = run / "acquire-dataset" / "dataset"
    dataset = out / "dataset"
    if dataset.exists():
        shutil.rmtree(dataset)
    dataset.mkdir(parents=True)
    for name in ("dataset.json", "manifest.csv"):
        shutil.copy(source / name, dataset / name)
    os.symlink((source / "images").resolve(), dataset / "images")  # absolute: the run may be a relative path
    info = read_json(source / "dataset.json")
    if info.get("source") != "synthetic":
        raise SystemExit("benchmarks/openset.py draws synthetic unknown species: give a synthetic run")
    trained = [int(s["taxon_id"]) for s in info["species"]]
    others = [s.taxon_id for s in load_catalog() if s.taxon_id not in trained][:unknown]
    config = DatasetConfig.model_validate({"source": "synthetic", "species": trained, "unknown_species": others,
                                           "synthetic": {"photos_per_species": photos, "image_size": 96}})
    _collect_unknown(config, config.unknown_catalog(), dataset, int(info.get("seed", 42)))
    return dataset


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:5.1f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _identify_demo_images(bundle: Path, folder: Path) -> list[tuple[str, str, str]]:
    from mushroom.identify import Identifier

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = {
        "blank white 1000x800": Image.new("RGB", (1000, 800), (255, 255, 255)),
        "flat grey 640x480": Image.new("RGB", (640, 480), (128, 128, 128)),
        "flat brown 640x480": Image.new("RGB", (640, 480), (112, 82, 52)),
        "random noise 400x400": Image.fromarray(rng.integers(0, 256, (400, 400, 3), dtype=np.uint8)),
        "1x1 red pixel": Image.new("RGB", (1, 1), (255, 0, 0)),
    }
    rows = []
    identifier = Identifier(bundle)
    for name, image in images.items():
        path = folder / (name.replace(" ", "_") + ".png")
        image.save(path)
        answer = identifier.identify(path)
        top = answer.candidates[0].scientific_name if answer.candidates and not answer.refused else ""
        rows.append((name, answer.verdict_text, top))
    return rows


COMPONENT_SWEEP = (8, 16, 32, 64, 128, 256, None)  # None: every component (the full shrunk covariance)


def _compare_scores(dataset: Path, splits: Path, bundle_dir: Path, variant: str) -> dict:
    """Every open-set score of ``variant`` per kind of negative: AUROC (known test photos against
    the kind) and FPR95 (share passing the threshold that keeps 95% of validation photos)."""
    from mushroom import openset, openset_fit
    from mushroom.bundle import read_bundle
    from mushroom.calibrate import OPEN_SET_TRAIN_PHOTOS
    from mushroom.datasets import balanced_sample, load_images, load_split, load_unknown
    from mushroom.negatives import gather_negatives
    from mushroom.policy import apply_temperature
    from mushroom.tflite import TFLiteClassifier

    bundle = read_bundle(bundle_dir)
    size = bundle.image_size
    model = TFLiteClassifier(bundle.model_path(variant))
    temperature = bundle.calibration.variant(variant).temperature
    split = {name: load_split(dataset, splits, name) for name in ("train", "val", "test")}
    picked = balanced_sample(split["train"].labels, OPEN_SET_TRAIN_PHOTOS, 0)
    unknown_paths, unknown_taxa = load_unknown(dataset)
    negatives = gather_negatives(size, unknown_images=load_images(unknown_paths, size),
                                         unknown_taxa=unknown_taxa)

    def predict(images):
        probs, feats = model.predict_with_features(images)
        return apply_temperature(probs, temperature), feats

    train_probs, train_feats = predict(load_images([split["train"].paths[i] for i in picked], size))
    val = predict(load_images(split["val"].paths, size))
    test = predict(load_images(split["test"].paths, size))
    kinds = {kind: predict(images) for kind, images in negatives.images.items()}
    scorers = {name: (lambda probs, feats, name=name: openset.open_set_score(probs, name))
               for name in openset_fit.CANDIDATE_SCORES}
    if train_feats is not None:
        labels = split["train"].labels[picked]
        for k in COMPONENT_SWEEP:
            stats = openset_fit.fit_feature_stats(train_feats, labels, len(bundle.catalog),
                                              components=k or train_feats.shape[1])
            name = "mahalanobis" + ("" if k == openset_fit.FEATURE_COMPONENTS else f" (k={k or 'all'})")
            scorers[name] = lambda probs, feats, stats=stats: stats.score(feats)
    table = {}
    for name, scorer in scorers.items():
        known_val, known_test = scorer(*val), scorer(*test)
        threshold, _ = openset_fit.certified_threshold(known_val)
        quantile = openset_fit.threshold_for(known_val)
        row = {"test_refused": float(np.mean(known_test < threshold))}
        for kind, out in kinds.items():
            s = scorer(*out)
            row[kind] = {"auroc": openset_fit.auroc(known_test, s),
                         "fpr95": float(np.mean(s >= quantile)) if len(s) else None,
                         "refused": float(np.mean(s < threshold)), "fit": kind in negatives.fit}
        table[name] = row
    return table


def _print_comparison(variant: str, table: dict) -> None:
    kinds = [k for k in next(iter(table.values())) if k != "test_refused"]
    print(f"\n{variant}: every score, AUROC / FPR95 per kind (known test refused at the certified threshold)")
    print(f"  {'score':<24} {'test refused':>12} " + " ".join(f"{k[:16]:>16}" for k in kinds))
    for name, row in table.items():
        cells = " ".join(f"{_num(row[k]['auroc']):>7} /{_pct(row[k]['fpr95']):>7}" for k in kinds)
        print(f"  {name:<24} {_pct(row['test_refused']):>12} {cells}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from mushroom import stages

    run = Path(args.run)
    loop = run / f"for-loop-1-iteration-{args.iteration}"
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="openset-bench-"))
    dataset = _dataset_with_unknowns(run, out, args.unknown, args.photos_per_species)
    splits = run / "split-dataset" / "splits"
    evaluation_dir, calibrated = out / "evaluation", out / "calibrated_bundle"
    for folder in (evaluation_dir, calibrated):
        shutil.rmtree(folder, ignore_errors=True)
    bundle = loop / "quantize-to-bundle" / "bundle"
    if args.requantize:
        from mushroom.bundle import read_bundle

        model_config = read_bundle(bundle).metadata["model_config"]
        bundle = out / "bundle"
        shutil.rmtree(bundle, ignore_errors=True)
        stages.quantize(dataset, splits, loop / "train-classifier" / "model", model_config,
                        int(json.loads((dataset / "dataset.json").read_text()).get("seed", 42)), bundle)
    evaluation = stages.evaluate(dataset, splits, loop / "train-classifier" / "model",
                                 bundle, evaluation_dir, calibrated, latency_runs=1)
    print(f"\n== {evaluation.model_name}: {evaluation.num_val_photos} validation, {evaluation.num_test_photos} test "
          f"photos; {args.unknown} unknown synthetic species x {args.photos_per_species} photos; output {out}\n")
    for name, v in evaluation.tflite_variants().items():
        o = v.open_set
        choice = ", ".join(f"{k} {_num(a)}" for k, a in o.score_choice.items())
        print(f"{name}: score {o.score} (AUROC the choice ranked: {choice}); threshold "
              f"{_num(o.threshold)}; validation refused {_pct(o.val_refused)}; test refused "
              f"{_pct(o.test_refused_gate_off)} (gate off) / {_pct(o.test_refused_gate_on)} (gate on)")
        if o.unknown_check is not None:
            print(f"  open-set check: {o.unknown_check.reason}")
        print(f"  {'kind':<18} {'fit':<4} {'photos':>6} {'AUROC':>6} {'FPR95':>7} {'refused: score':>15} "
              f"{'gate+score':>11} {'named edible':>13}")
        for kind, k in o.kinds.items():
            print(f"  {kind:<18} {'yes' if k.fit else 'no':<4} {k.photos:>6} {_num(k.auroc):>6} {_pct(k.fpr95):>7} "
                  f"{_pct(k.refused_gate_off):>15} {_pct(k.refused_gate_on):>11} {_pct(k.named_edible_share):>13}")
        cal = v.calibrated.calibration.nll
        uncal = v.uncalibrated.calibration.nll
        print(f"  calibration: T {v.temperature:.3f} ({'kept' if v.temperature_fit.kept else 'not kept'}); test NLL "
              f"{uncal:.4f} -> {cal:.4f} ({100 * (cal - uncal) / uncal:+.1f}%)\n")
    print("identify with the re-calibrated bundle (default variant):")
    for name, verdict, top in _identify_demo_images(calibrated, out / "images"):
        print(f"  {name:<22} {verdict}{'  (top: ' + top + ')' if top else ''}")
    summary = {name: v.open_set.model_dump(exclude={"histogram"}) for name, v in
               evaluation.tflite_variants().items()}
    (out / "openset_summary.json").write_text(json.dumps(summary, indent=1))
    calibration = calibrated / "calibration.json"
    print(f"\nbundle: {sum(p.stat().st_size for p in calibrated.iterdir() if p.is_file()) / 1e6:.2f} MB, of which "
          f"{calibration.name} (feature statistics included) {calibration.stat().st_size / 1e6:.3f} MB")
    if args.compare:
        from mushroom.bundle import read_bundle

        shipped_variant = read_bundle(calibrated).shipped_variant
        comparison = {}
        for variant in dict.fromkeys([shipped_variant, "float32"]):
            comparison[variant] = _compare_scores(dataset, splits, calibrated, variant)
            _print_comparison(variant, comparison[variant])
        (out / "openset_scores.json").write_text(json.dumps(comparison, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
