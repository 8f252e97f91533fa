"""Post-training conversion to TFLite variants, measured on validation photos, and the choice.

The variants and how each is built live in :mod:`mushroom.variants`. Input is 0-255 RGB
pixels as in training. The representative data comes from the train split through the same
preprocessing as training (``mushroom.preprocess.load_image``), balanced across species, no
augmentation. The stage then picks, on the validation split, the fastest integer variant whose
top-1 loss against float32 stays within a tolerance, and says why.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mushroom import export, quant_diagnostics, tflite_build, tflite_ranges
from mushroom import variants as registry
from mushroom.latency import LatencySetup, measure_interleaved
from mushroom.tflite import TFLiteClassifier

log = logging.getLogger(__name__)


def export_saved_model(model, directory: str | Path, features: bool = True) -> Path:
    """Export a Keras model as a TF SavedModel (the converter's most reliable input).

    With ``features`` the SavedModel (and every TFLite variant converted from it) has two
    outputs, ``probabilities`` and the backbone's pooled ``features``
    (:func:`mushroom.models.with_feature_output`); the Keras model itself is not changed.
    """
    from mushroom.models import with_feature_output

    directory = Path(directory)
    (with_feature_output(model) if features else model).export(str(directory), format="tf_saved_model",
                                                                verbose=False)
    return directory


def convert(saved_model_dir: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    """The first (for most variants the only) attempt of ``variant``'s build function."""
    inputs = registry.BuildInputs(Path(saved_model_dir), representative)
    model, _ = next(iter(registry.get(variant).build(inputs)))
    return model


@dataclass
class MeasuredVariant:
    """One converted variant measured on the validation split."""

    name: str
    model: bytes
    top1: float
    agreement: float  # share of photos with the same top-1 as float32
    latency_ms: float  # 1 thread, median: every candidate is timed at the end (nan until then)
    predictions: np.ndarray  # top-1 class per validation photo
    extra: dict = field(default_factory=dict)

    @property
    def size_mb(self) -> float:
        return len(self.model) / 1e6

    def summary(self, float_top1: float) -> dict:
        return {"top1": self.top1, "top1_loss_points": (float_top1 - self.top1) * 100,
                "agreement_with_float32": self.agreement, "latency_ms": self.latency_ms,
                "size_mb": self.size_mb, **self.extra}


def _measure(name: str, model: bytes, images: np.ndarray, labels: np.ndarray, float_pred: np.ndarray | None,
             threads: int, extra: dict | None = None) -> MeasuredVariant:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.tflite"
        path.write_bytes(model)
        probs = TFLiteClassifier(path, num_threads=threads).predict(images)
    pred = probs.argmax(1)
    agreement = 1.0 if float_pred is None else float(np.mean(pred == float_pred))
    return MeasuredVariant(name, model, float(np.mean(pred == labels)), agreement, float("nan"), pred, extra or {})


def _time_candidates(candidates: dict[str, MeasuredVariant], image: np.ndarray,
                     setup: LatencySetup) -> tuple[dict, dict]:
    """Every candidate timed in the same interleaved rounds (:func:`mushroom.latency.measure_interleaved`);
    sets each one's ``latency_ms`` (1 thread, median)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, c in candidates.items():
            paths[name] = Path(tmp) / f"{name}.tflite"
            paths[name].write_bytes(c.model)
        latency, settings = measure_interleaved(paths, image, setup)
    for name, c in candidates.items():
        c.latency_ms = latency[name]["threads_1"]["median_ms"]
    return latency, settings


def _acceptable(c: MeasuredVariant, reference: MeasuredVariant, tolerance_points: float, min_agreement: float) -> bool:
    return (reference.top1 - c.top1) * 100 <= tolerance_points + 1e-9 and c.agreement >= min_agreement - 1e-9


#: An int8-only variant within this factor of dynamic-range int8's latency counts as "not slower"
#: (latency is measured, and stages running side by side make it noisy).
INT8_ONLY_SLACK = 1.05


def representative_indices(labels: np.ndarray, samples: int, seed: int, names: list[str]) -> np.ndarray:
    """Train photos for int8 calibration: ``samples`` of them, balanced across species.

    Every species must be among them: activation ranges calibrated without a species' photos
    clip what the model computes for it.

    Raises:
        ValueError: Fewer photos asked for than there are species, or a species without train
            photos, naming the species and the setting to change; before any conversion.
    """
    from mushroom.datasets import balanced_sample

    picked = balanced_sample(labels, samples, seed)
    missing = sorted(set(range(len(names))) - set(np.asarray(labels)[picked].tolist()))
    if missing:
        shown = ", ".join(names[i] for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ValueError(f"quantize: the representative set ({len(picked)} train photos) has no photo of "
                         f"{len(missing)} of {len(names)} species ({shown}); int8 calibration needs every species: "
                         f"set quantize.representative_samples to at least {len(names)} (default 300) and give "
                         f"every species train photos")
    return picked


def choose_variant(candidates: dict[str, MeasuredVariant], tolerance_points: float,
                   min_agreement: float = 0.0) -> tuple[str, str]:
    """The integer variant to ship: int8-only first, else the fastest (ties: smaller).

    A variant qualifies when its top-1 is within ``tolerance_points`` of float32's and it
    agrees with float32's top-1 on at least ``min_agreement`` of the validation photos (on a
    small validation split, top-1 alone can hide many changed answers). The fastest qualifying
    int8-only variant (integer-only NPUs and Edge TPUs run it) is shipped unless it is slower
    than dynamic-range int8 (the variants built without representative photos) by more than
    :data:`INT8_ONLY_SLACK`; then, or when no int8-only variant qualifies, the fastest of the
    rest (dynamic range, selective, int16x8).

    Returns:
        ``(name, reason)``; falls back to the float32 reference when no integer variant qualifies.
    """
    reference = candidates[registry.REFERENCE]
    integer = [n for n in candidates if n in registry.integer_names()]
    ok = {n: candidates[n] for n in integer if _acceptable(candidates[n], reference, tolerance_points, min_agreement)}
    if not ok:
        return registry.REFERENCE, (
            f"no integer variant is within {tolerance_points:g} point(s) of {registry.REFERENCE} top-1 "
            f"({reference.top1:.3f}) with agreement >= {min_agreement:.2f} on the validation split; "
            f"keeping {registry.REFERENCE}")
    def fastest(group):
        return min(group, key=lambda c: (c.latency_ms, c.size_mb))

    best = fastest(ok.values())
    int8_only = [c for c in ok.values() if registry.get(c.name).integer_only]
    dynamic = [c for c in ok.values() if not registry.get(c.name).needs_representative]
    bar = fastest(dynamic) if dynamic else None
    preferred = fastest(int8_only) if int8_only else None
    if preferred is not None and (bar is None or preferred.latency_ms <= INT8_ONLY_SLACK * bar.latency_ms):
        best = preferred
    others = ", ".join(f"{c.name} {c.latency_ms:.2f} ms" for c in sorted(ok.values(), key=lambda c: c.latency_ms)
                       if c.name != best.name)
    if preferred is not None and best is not preferred:
        others += (f" (int8-only {preferred.name} is more than {(INT8_ONLY_SLACK - 1) * 100:.0f}% slower than "
                   f"dynamic-range {bar.name})")
    rejected = ", ".join(f"{n} ({(candidates[n].top1 - reference.top1) * 100:+.1f} pts, agreement "
                         f"{candidates[n].agreement:.3f})" for n in integer if n not in ok)
    kind = "fastest int8-only variant" if best is preferred else "fastest integer variant"
    reason = (f"{best.name}: {kind} within {tolerance_points:g} point(s) of {registry.REFERENCE} "
              f"on the validation split (top-1 {best.top1:.3f} vs {reference.top1:.3f}, agreement "
              f"{best.agreement:.3f}, {best.latency_ms:.2f} ms, {best.size_mb:.2f} MB)")
    if best.latency_ms > 1.05 * reference.latency_ms:
        reason += (f"; note: on this CPU it is slower than {registry.REFERENCE} ({reference.latency_ms:.2f} ms), "
                   "e.g. hard-swish without fast int8 kernels")
    if others:
        reason += f"; also within tolerance but slower: {others}"
    if rejected:
        reason += f"; outside tolerance: {rejected}"
    return best.name, reason


def quantize_model(model, representative: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
                   variants: list[str], tolerance_points: float = 1.0, min_agreement: float = 0.97,
                   escalation_steps=(1, 2, 4, 8, 16, 32, 64), debug_samples: int = 64,
                   latency: LatencySetup | None = None, fold_preprocessing: bool = True,
                   profile_points: int = 6, recipe=()) -> tuple[dict[str, bytes], dict]:
    """Build ``variants`` (see :mod:`mushroom.variants`), measure each on validation and choose one.

    A build that yields several attempts (an escalating variant) is measured attempt by
    attempt; the first acceptable one is kept, else the last. A variant that fails to build is
    left out with a warning, except the required ones.

    With ``fold_preprocessing`` the model is first rewritten into a float-equivalent one whose
    preprocessing quantizes well (:func:`mushroom.export.fold_preprocessing`; ResNet50's
    channel flip goes into its first convolution). With ``profile_points`` > 0 the report also
    says where full int8 changes answers (:func:`error_profile`). ``recipe``: activation-range
    rules (:class:`mushroom.variants.RangeRule` or dicts of its fields) for ``int8_recipe``; a
    recipe that does not fit the model stops the stage (:class:`mushroom.tflite_ranges.RecipeError`).

    Returns:
        ``(models, report)``: variant -> flatbuffer, and a JSON-able report with each
        variant's validation figures, the build notes (e.g. worst layers), the choice and its reason.
    """
    threads = os.cpu_count() or 1
    candidates: dict[str, MeasuredVariant] = {}
    report: dict = {"tolerance_points": tolerance_points, "min_agreement": min_agreement,
                    "representative_samples": int(len(representative)),
                    "validation_photos": int(len(val_images)), "latency_threads": 1}
    if fold_preprocessing:
        model, fold = export.fold_preprocessing(model)
        if fold is not None:
            report["preprocessing_fold"] = fold.description
            log.info("quantize: %s", fold.description)
    with tempfile.TemporaryDirectory(prefix="mushroom-savedmodel-") as tmp:
        rules = tuple(r if isinstance(r, registry.RangeRule) else registry.RangeRule(**r) for r in recipe)
        inputs = registry.BuildInputs(export_saved_model(model, Path(tmp) / "saved_model"), representative,
                                      debug_samples, tuple(escalation_steps), report, rules)
        if rules:  # a recipe that does not fit the model stops the stage before any variant is built
            tflite_ranges.check_recipe(tflite_build.calibrated_model(inputs), len(representative), rules)
        ordered = [registry.REFERENCE] + [v for v in variants if v != registry.REFERENCE]
        float_pred = None
        for name in ordered:
            start = time.monotonic()
            try:
                candidates[name] = _build_and_measure(
                    registry.get(name), inputs, val_images, val_labels, float_pred, candidates.get(registry.REFERENCE),
                    (tolerance_points, min_agreement), threads)
            except Exception as err:  # noqa: BLE001 - one optional variant must not sink the stage
                if name in registry.REQUIRED or isinstance(err, tflite_ranges.RecipeError):
                    raise
                log.warning("variant %s failed to convert, left out: %s", name, str(err).splitlines()[0])
                report.setdefault("failed", {})[name] = str(err).splitlines()[0][:300]
                continue
            c = candidates[name]
            if name == registry.REFERENCE:
                float_pred = c.predictions
            log.info("%-15s %6.2f MB  val top-1 %.3f  agree %.3f  (%.0fs)", name, c.size_mb, c.top1,
                     c.agreement, time.monotonic() - start)
        if profile_points > 0 and float_pred is not None:
            start = time.monotonic()
            try:
                report["error_profile"] = error_profile(inputs, val_images, float_pred, profile_points, threads)
                log.info("quantize: %s (%.0fs)", report["error_profile"]["finding"], time.monotonic() - start)
            except Exception as err:  # noqa: BLE001 - a diagnosis must not sink the stage
                log.warning("error profile failed: %s", str(err).splitlines()[0])
                report.setdefault("failed", {})["error_profile"] = str(err).splitlines()[0][:300]
    start = time.monotonic()
    report["latency"], report["latency_settings"] = _time_candidates(candidates, val_images[0],
                                                                     latency or LatencySetup())
    log.info("latency (1 thread, median of %d runs in %d interleaved rounds): %s (%.0fs)",
             report["latency_settings"]["runs"], report["latency_settings"]["rounds"],
             ", ".join(f"{n} {c.latency_ms:.2f} ms" for n, c in candidates.items()), time.monotonic() - start)
    float_top1 = candidates[registry.REFERENCE].top1
    report["variants"] = {n: c.summary(float_top1) for n, c in candidates.items()}
    shipped_variant, reason = choose_variant(candidates, tolerance_points, min_agreement)
    report["chosen"], report["reason"] = shipped_variant, reason  # the bundle records it (metadata.json)
    log.info("shipped variant: %s", reason)
    return {n: c.model for n, c in candidates.items()}, report


def _build_and_measure(variant: registry.Variant, inputs: registry.BuildInputs, val_images, val_labels,
                       float_pred, reference: MeasuredVariant | None, acceptance, threads) -> MeasuredVariant:
    """Measure each attempt of ``variant``'s build until one is acceptable (else keep the last)."""
    measured = None
    for attempt, (data, facts) in enumerate(variant.build(inputs)):
        measured = _measure(variant.name, data, val_images, val_labels, float_pred, threads, facts)
        if attempt or facts:
            log.info("%s attempt %d %s: val top-1 %.3f, agreement %.3f", variant.name, attempt + 1,
                     {k: len(v) if isinstance(v, list) else v for k, v in facts.items()}, measured.top1,
                     measured.agreement)
        if reference is None or _acceptable(measured, reference, *acceptance):
            break
    if measured is None:
        raise RuntimeError(f"variant {variant.name}: the build function produced no model")
    return measured


def _agreement(model: bytes, images: np.ndarray, reference: np.ndarray, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(model)
        pred = TFLiteClassifier(path, num_threads=threads).predict(images).argmax(1)
    return float(np.mean(pred == reference))


def _spread(n: int, points: int) -> list[int]:
    """Up to ``points`` values of 1..n, evenly spread, always with 1 and n."""
    return sorted({int(round(x)) for x in np.linspace(1, n, max(2, min(points, n)))})


def error_profile(inputs: registry.BuildInputs, images: np.ndarray, float_pred: np.ndarray, points: int = 6,
                  threads: int | None = None) -> dict:
    """Where full int8 changes answers: by depth and by op group, from one calibration.

    * depth: int8 for the first k blocks (stem first, head last), float for the rest, for
      ``points`` values of k: agreement with float32's top-1 as quantization reaches deeper;
    * groups: int8 everywhere except one op group (input and stem, squeeze-excite,
      activations, depthwise convolutions, convolutions, residual adds, head) kept in float:
      how much agreement that group costs.

    Returns:
        A JSON-able dict with ``blocks``, ``depth``, ``groups``, ``full_int8_agreement`` and a
        one-line ``finding``.
    """
    calibrated = tflite_build.calibrated_model(inputs)
    ops = tflite_ranges.quantizable_ops(calibrated)
    blocks = quant_diagnostics.blocks_in_order(ops)
    depth = [{"blocks_quantized": k, "last_block": blocks[k - 1],
              "agreement": _agreement(quant_diagnostics.first_blocks_quantized(calibrated, ops, k), images, float_pred,
                                      threads)} for k in _spread(len(blocks), points)]
    full = depth[-1]["agreement"]
    groups = []
    for group in tflite_ranges.OP_GROUPS:
        n = sum(o.group == group for o in ops)
        if n:
            groups.append({"group": group, "ops": n, "agreement": _agreement(
                quant_diagnostics.group_in_float(calibrated, ops, group), images, float_pred, threads)})
    return {"blocks": blocks, "depth": depth, "groups": groups, "full_int8_agreement": full,
            "finding": _finding(depth, groups, full)}


def _finding(depth: list[dict], groups: list[dict], full: float) -> str:
    lost = 1.0 - full
    if lost <= 0:
        return "full int8 keeps every answer of float32 on the validation split"
    first = 1.0 - depth[0]["agreement"]
    steps = [(depth[i - 1]["agreement"] - d["agreement"], depth[i - 1]["last_block"], d["last_block"])
             for i, d in enumerate(depth) if i]
    if first >= 0.5 * lost:
        where = (f"at the input: quantizing only the {depth[0]['last_block']} already changes "
                 f"{first:.1%} of answers (full int8: {lost:.1%})")
    else:
        drop, after, upto = max(steps) if steps else (0.0, "", "")
        where = (f"through depth: the stem alone changes {first:.1%}, full int8 {lost:.1%}; the largest step "
                 f"({drop:.1%}) comes with the blocks after {after} up to {upto}")
    best = max(groups, key=lambda g: g["agreement"]) if groups else None
    if best and best["agreement"] > full:
        where += (f"; keeping the {best['group']} in float lifts agreement most "
                  f"({full:.1%} -> {best['agreement']:.1%})")
    return "answers flip " + where


def _profile_markdown(profile: dict) -> list[str]:
    from mushroom.formatting import md_table

    depth = profile["depth"]
    lines = ["## Where full int8 changes answers", "", profile["finding"] + ".", "",
             "Top-1 agreement with float32 when only the first k blocks are int8 (the rest float):", "",
             md_table(["k", "int8 up to", "agreement"],
                      [[d["blocks_quantized"], f"`{d['last_block']}`", f"{d['agreement']:.3f}"] for d in depth]), "",
             "```mermaid", "xychart-beta", '    title "Agreement with float32 as int8 reaches deeper"',
             "    x-axis [" + ", ".join(f'"{d["last_block"]}"' for d in depth) + "]",
             '    y-axis "agreement" 0 --> 1',
             "    line [" + ", ".join(f"{d['agreement']:.3f}" for d in depth) + "]", "```", ""]
    if profile["groups"]:
        lines += [f"Full int8 except one op group kept in float (full int8: {profile['full_int8_agreement']:.3f}):",
                  "", md_table(["kept in float", "ops", "agreement"],
                               [[g["group"], g["ops"], f"{g['agreement']:.3f}"] for g in profile["groups"]]), ""]
    return lines


def remedy_summary(report: dict) -> str | None:
    """Which int8-only variant restores float32's answers that plain full int8 changes, if any."""
    measured = report.get("variants", {})
    plain = measured.get(registry.FULL_INTEGER)
    if plain is None:
        return None
    others = {n: v for n, v in measured.items()
              if n != registry.FULL_INTEGER and n in registry.names() and registry.get(n).integer_only}
    best = max(others, key=lambda n: others[n]["agreement_with_float32"], default=None)
    base = f"plain full {registry.FULL_INTEGER} keeps {plain['agreement_with_float32']:.1%} of float32's answers"
    if best is None or others[best]["agreement_with_float32"] <= plain["agreement_with_float32"] + 1e-9:
        return base + "; no other int8-only variant keeps more"
    return (base + f"; the best int8-only remedy, {best} ({registry.get(best).description}), keeps "
            f"{others[best]['agreement_with_float32']:.1%}")


def headline_metrics(report: dict) -> dict[str, float]:
    """Size and validation top-1 of every variant, for KFP ``Metrics``."""
    measured = report["variants"]
    return {**{f"size_mb_{name}": v["size_mb"] for name, v in measured.items()},
            **{f"val_top1_{name}": v["top1"] for name, v in measured.items()}}


def latency_note(report: dict) -> str:
    """How the report's latency was measured, in one sentence (and whether the machine was busy)."""
    s = report.get("latency_settings")
    if not s:
        return f"latency with {report.get('latency_threads', '?')} thread(s), each variant timed alone."
    note = (f"latency: 1 thread, median of {s['runs']} runs per variant in {s['rounds']} interleaved rounds "
            f"(every variant timed in every round), after {s['warmup']} warm-up runs.")
    if s.get("busy"):
        note += (f" The machine was busy while timing (load average {s.get('load_before')} -> "
                 f"{s.get('load_after')}): these figures are not comparable with a quiet run.")
    return note


def format_report(report: dict) -> str:
    """The quantization report as Markdown."""
    from mushroom.formatting import md_table

    measured = md_table(
        ["variant", "size MB", "val top-1", "loss (points)", f"agreement with {registry.REFERENCE}", "latency ms"],
        [[name, f"{v['size_mb']:.2f}", f"{v['top1']:.3f}", f"{v['top1_loss_points']:+.1f}",
          f"{v['agreement_with_float32']:.3f}", f"{v['latency_ms']:.2f}"] for name, v in report["variants"].items()])
    lines = ["# Quantization report", "",
             f"Validation photos: {report['validation_photos']}; representative photos: "
             f"{report['representative_samples']}; {latency_note(report)}", "",
             measured, "", f"**Chosen:** {report['reason']}", ""]
    if report.get("preprocessing_fold"):
        lines += [f"**Preprocessing:** {report['preprocessing_fold']} (float-equivalent; in TFLite int8 "
                  "a channel flip copies bytes between tensors of different scales).", ""]
    if report.get("head_ranges"):
        ranges = "; ".join(f"`{name[-40:]}` [{r['calibrated'][0]:.2f}, {r['calibrated'][1]:.2f}] -> "
                           f"[{r['held_out_like'][0]:.2f}, {r['held_out_like'][1]:.2f}]"
                           for name, r in report["head_ranges"].items())
        lines += [f"**int8_head_range:** int8 ranges of the head from held-out-like (shifted) train photos instead "
                  f"of the train photos' min-max: {ranges}.", ""]
    if report.get("recipe"):
        r = report["recipe"]
        rules = "; ".join(f"`{x['tensors']}` {x['method']} on {x['photos'].replace('_', '-')} photos ({x['matched']} "
                          f"activation(s))" for x in r["rules"])
        lines += [f"**int8_recipe:** {rules}; {r['ranges_changed']} of {r['ranges_set']} ranges changed.", ""]
    remedy = remedy_summary(report)
    if remedy:
        lines += [f"**Remedy:** {remedy}.", ""]
    if report.get("error_profile"):
        lines += _profile_markdown(report["error_profile"])
    if report.get("layer_errors"):
        worst = md_table(["op", "tensor", "RMSE / scale"],
                         [[e["op_name"], f"`{e['tensor_name']}`", f"{e['rmse_over_scale']:.2f}"]
                          for e in report["layer_errors"][:10]])
        lines += [f"## Worst layers under full {registry.FULL_INTEGER}", "",
                  "RMS error of the layer output in units of its int8 step (rounding alone gives ~0.29).", "",
                  worst]
    return "\n".join(lines) + "\n"
