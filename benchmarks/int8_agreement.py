"""Full int8 that keeps float's answers (issue 14): remedies side by side, per architecture and seed.

Trains small classifiers from scratch on synthetic photos (the committed test bed: seeded
photos, seeded weights; no downloads), caches each trained model, then builds every remedy
with the project's own conversion code and prints, per remedy (mean over seeds):

* its class: ``int8-only`` (int8 weights and activations everywhere, float I/O boundary),
  ``int16`` (some int16 activations), ``mixed`` (some ops float), ``float``;
* val top-1, top-1 agreement with float32 (all photos, and where float's top-1 margin > 0.1),
  agreement of the top-k set, of the safety verdict (a fixed policy: edible at P(edible) >= 0.9,
  not edible below 0.5), KL divergence to float32, NLL, size and latency at 1 and all threads.

Results are cached per (architecture, seed, remedy) under ``--cache``: an interrupted sweep
resumes where it stopped.

    python benchmarks/int8_agreement.py --architectures resnet50 --seeds 0 1 2
    python benchmarks/int8_agreement.py --architectures efficientnetv2-b0 --seeds 0 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mushroom import backbones, export, quant_diagnostics, tflite_build, tflite_ranges, variants
from mushroom.policy import NOT_EDIBLE, Policy
from mushroom.tflite import TFLiteClassifier, measure_latency

POLICY = Policy(edible_threshold=0.9, not_edible_below=0.5)


def _dataset(species: int, photos: int, size: int):
    """Seeded synthetic photos (seed 7, as the tests), shuffled with seed 0: images, labels, edible mask."""
    from mushroom.config import SyntheticSourceConfig
    from mushroom.datasets import load_images
    from mushroom.sources.synthetic import generate_synthetic
    from mushroom.species import load_catalog

    catalog = load_catalog()
    subset = catalog.subset([s.taxon_id for s in catalog.species[:species]])
    ids = [s.taxon_id for s in subset.species]
    with tempfile.TemporaryDirectory() as tmp:
        records = generate_synthetic(SyntheticSourceConfig(photos_per_species=photos, image_size=size,
                                                           photos_per_observation=1), subset, Path(tmp), seed=7)
        images = load_images([str(Path(tmp) / r.file) for r in records], size)
    labels = np.array([ids.index(r.taxon_id) for r in records])
    order = np.random.default_rng(0).permutation(len(images))
    return images[order], labels[order], np.array([s.is_edible for s in subset.species])


def _trained(arch: str, seed: int, images, labels, size: int, epochs: int, cache: Path):
    import keras

    from mushroom.models import build_model, load_model

    path = cache / f"{arch}-{size}px-{epochs}ep-seed{seed}.keras"
    if path.exists():
        return load_model(path)
    keras.utils.set_random_seed(seed)
    model = build_model(arch, int(labels.max()) + 1, size, "none")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    start = time.monotonic()
    model.fit(images.astype(np.float32), labels, epochs=epochs, batch_size=16, verbose=0)
    print(f"[{arch} seed {seed}] trained in {time.monotonic() - start:.0f}s", file=sys.stderr)
    model.save(path)
    return model


# --- remedies: name -> (class, build(models, representative) -> flatbuffer) -----------------


def _converter(saved_model: Path, representative: np.ndarray, ops=None):
    import tensorflow as tf

    inputs = variants.BuildInputs(saved_model, representative)
    return tflite_build._calibrated_converter(inputs, ops or [tf.lite.OpsSet.TFLITE_BUILTINS_INT8])  # noqa: SLF001


def _build(variant: str, fold: bool = True) -> Callable:
    def build(saved: dict[bool, Path], representative: np.ndarray) -> bytes:
        model, _ = next(iter(variants.get(variant).build(variants.BuildInputs(saved[fold], representative))))
        return model
    return build


def _few_photos(saved, representative):
    return _build(variants.FULL_INTEGER)(saved, representative[:16])


def _per_tensor(saved, representative):
    converter = _converter(saved[True], representative)
    converter._experimental_disable_per_channel = True  # noqa: SLF001 - the converter's per-tensor switch
    return converter.convert()


def _group_in_float(group: str) -> Callable:
    def build(saved, representative):
        calibrated = tflite_build.calibrate(variants.BuildInputs(saved[True], representative))
        return quant_diagnostics.group_in_float(calibrated, tflite_ranges.quantizable_ops(calibrated), group)
    return build


_CALIBRATED: dict[tuple[str, int], bytes] = {}


def _calibrated(saved, representative) -> bytes:
    """One calibration per (model, photos) for all range remedies."""
    key = (str(saved[True]), len(representative))
    if key not in _CALIBRATED:
        _CALIBRATED[key] = tflite_build.calibrate(variants.BuildInputs(saved[True], representative))
    return _CALIBRATED[key]


def _all_ranges(method: str, percentile: float = 99.99) -> Callable:
    """Every activation's range by ``method`` over the calibration photos, except fixed ones.

    Left as calibrated: the preprocessing at the input (pixel space) and outputs whose range
    the op fixes (SOFTMAX, LOGISTIC, TANH).
    """
    def build(saved, representative):
        calibrated = _calibrated(saved, representative)
        fb = tflite_ranges._flatbuffer(calibrated)  # noqa: SLF001
        graph, types = fb.subgraphs[0], tflite_ranges._op_types(fb)  # noqa: SLF001
        skip = {int(t) for t in graph.inputs}
        for op in graph.operators:
            if types[op.opcodeIndex] in ("SOFTMAX", "LOGISTIC", "TANH") or any(int(i) in skip for i in op.inputs) \
                    and types[op.opcodeIndex] in ("SUB", "ADD", "MUL", "PAD", "QUANTIZE"):
                skip |= {int(t) for t in op.outputs}
        names_ = [n for i, t in enumerate(graph.tensors) if i not in skip
                  and (n := tflite_ranges._tensor_name(t)) in tflite_ranges.calibrated_ranges(calibrated)]  # noqa: SLF001
        values = tflite_ranges.activation_values(calibrated, representative, names_)
        ranges = {n: tflite_ranges.activation_range(v, method, percentile) for n, v in values.items()}
        return tflite_build.quantize_full_integer(tflite_ranges.with_ranges(calibrated, ranges))
    return build


def _head_ranges(which: str, method: str = "minmax", percentile: float = 99.99, held_out_like: bool = False):
    """The logits' (``which="logits"``) or the logits' and features' (``"head"``) ranges."""
    def build(saved, representative):
        calibrated = _calibrated(saved, representative)
        head = tflite_ranges.head_tensors(calibrated)
        names_ = [head.logits] + ([head.features] if which == "head" else [])
        photos = tflite_ranges.held_out_like(representative) if held_out_like else representative
        values = tflite_ranges.activation_values(calibrated, photos, names_)
        ranges = {n: tflite_ranges.activation_range(v, method, percentile) for n, v in values.items()}
        return tflite_build.quantize_full_integer(tflite_ranges.with_ranges(calibrated, ranges))
    return build


# --- the LiteRT quantizer (litert-quantizer, successor of ai-edge-quantizer) ----------------


def _litert(algorithm: str) -> Callable:
    """Full int8 by litert-quantizer's ``static_wi8_ai8`` recipe with ``algorithm`` for the weights.

    Its MSE and OCTAV choose weight clipping ranges of the convolutions and fully connected
    layers (other ops stay min-max: OCTAV refuses the asymmetric constants of ``SUB``);
    activations are min-max from its own calibration.
    """
    def build(saved, representative):
        from ai_edge_litert.interpreter import Interpreter
        from litert_quantizer import quantizer, recipe

        float_model = _build(variants.REFERENCE)(saved, representative)
        signatures = Interpreter(model_content=float_model).get_signature_list()
        key = next(iter(signatures))
        name = signatures[key]["inputs"][0]
        from litert_quantizer import recipe_manager
        from litert_quantizer.qtyping import TFLOperationName

        rules = recipe_manager.RecipeManager()
        rules.add_static_config(".*", TFLOperationName.ALL_SUPPORTED, 8, 8)  # min-max everywhere
        if algorithm != "MIN_MAX_UNIFORM_QUANT":  # then the algorithm for the weights of these ops
            for op in (TFLOperationName.CONV_2D, TFLOperationName.DEPTHWISE_CONV_2D,
                       TFLOperationName.FULLY_CONNECTED):
                rules.add_static_config(".*", op, 8, 8, algorithm_key=recipe.AlgorithmName[algorithm])
        qt = quantizer.Quantizer(bytearray(float_model), rules.get_quantization_recipe())
        data = {key: [{name: photo[None].astype(np.float32)} for photo in representative]}
        result = qt.quantize(qt.calibrate(data), enable_progress_report=False)
        return bytes(result.quantized_model)
    return build


# --- cross-layer equalization (Nagel et al. 2019) ------------------------------------------


def _bottleneck_pairs(backbone) -> list[tuple[str, str, str]]:
    """(conv, its BatchNorm, next conv) pairs with only a ReLU between: ResNet50's bottlenecks."""
    names_ = {layer.name for layer in backbone.layers}
    pairs = []
    for layer in backbone.layers:
        if layer.name.endswith("_1_conv") or layer.name.endswith("_2_conv"):
            prefix, k = layer.name[:-len("_1_conv")], int(layer.name[-len("1_conv")])
            a_bn, b, relu = f"{prefix}_{k}_bn", f"{prefix}_{k + 1}_conv", f"{prefix}_{k}_relu"
            if {a_bn, b, relu} <= names_:
                pairs.append((layer.name, a_bn, b))
    return pairs


def equalize_cross_layer(model):
    """A float-equivalent copy of ``model`` whose consecutive ReLU convolutions have equal weight ranges.

    For each pair (conv A + BatchNorm, ReLU, conv B), output channel c of A is scaled by 1/s_c
    (BatchNorm gamma and beta: ReLU commutes with a positive scale) and input channel c of B
    by s_c, with s_c = sqrt(r_A(c) / r_B(c)) over the BatchNorm-folded weight ranges, so both
    become sqrt(r_A r_B). Only for ReLU networks (ResNet50): swish and ReLU6 are not
    positive-homogeneous. Returns ``(model, pairs equalized)``.
    """
    import keras

    from mushroom.models import BACKBONE_NAME

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    backbone = clone.get_layer(BACKBONE_NAME)
    pairs = _bottleneck_pairs(backbone)
    for a_name, bn_name, b_name in pairs:
        a, bn, b = backbone.get_layer(a_name), backbone.get_layer(bn_name), backbone.get_layer(b_name)
        gamma, beta, mean, var = bn.get_weights()
        folded = a.get_weights()[0] * (gamma / np.sqrt(var + bn.epsilon))
        r_a = np.abs(folded).max(axis=(0, 1, 2))
        wb, *b_rest = b.get_weights()
        r_b = np.abs(wb).max(axis=(0, 1, 3))
        scale = np.where((r_a > 0) & (r_b > 0), np.sqrt(r_a / np.maximum(r_b, 1e-12)), 1.0)
        bn.set_weights([gamma / scale, beta / scale, mean, var])
        b.set_weights([wb * scale[None, None, :, None], *b_rest])
    return clone, len(pairs)


def _equalized(variant: str) -> Callable:
    def build(saved, representative):
        from mushroom.quantize import export_saved_model

        model, pairs = equalize_cross_layer(saved["keras"])
        if not pairs:
            raise ValueError("no conv-ReLU-conv pairs to equalize (ResNet50 bottlenecks only)")
        before = saved["keras"].predict(representative[:16].astype(np.float32), verbose=0)
        after = model.predict(representative[:16].astype(np.float32), verbose=0)
        if np.abs(before - after).max() > 1e-3:
            raise RuntimeError(f"equalization changed the float model (max difference {np.abs(before - after).max()})")
        folded, _ = export.fold_preprocessing(model)
        path = export_saved_model(folded, Path(saved["tmp"]) / f"equalized-{variant}")
        out, _ = next(iter(variants.get(variant).build(variants.BuildInputs(path, representative))))
        return out
    return build


# --- a short quantization-aware fine-tune of the head, distilled from float ----------------


def _head_qat(epochs: int = 60) -> Callable:
    """int8_head_range whose classifier is fine-tuned on the int8 backbone's own features.

    Keras 3 has no tensorflow-model-optimization; this is the part of QAT that fits the
    stack without rewriting the graph: the backbone stays as calibrated, and the Dense head
    is trained (Adam, ``epochs`` full-batch steps) to reproduce float32's probabilities
    (KL divergence) from the features the int8 model actually computes, with its kernel
    fake-quantized per output channel and its logits fake-quantized to the int8 range the
    converter will use (straight-through gradients). The int8 model is then quantized with
    exactly those ranges.
    """
    def build(saved, representative):
        import keras
        from keras import ops

        from mushroom.quantize import export_saved_model

        model = saved["keras"]
        inputs = variants.BuildInputs(saved[True], representative)
        calibrated = tflite_build.calibrated_model(inputs)
        ranges = tflite_ranges.head_ranges_from(calibrated, tflite_ranges.held_out_like(representative))
        head = tflite_ranges.head_tensors(calibrated)
        base = tflite_build.quantize_full_integer(tflite_ranges.with_ranges(calibrated, ranges))
        photos = np.concatenate([representative, tflite_ranges.held_out_like(representative),
                                 representative[:, :, ::-1]]).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "m.tflite").write_bytes(base)
            _, features = TFLiteClassifier(Path(tmp) / "m.tflite").predict_with_features(photos)
        teacher = model.predict(photos, verbose=0)
        kernel, bias = model.get_layer("probabilities").get_weights()
        lo, hi = ranges[head.logits]
        step = (hi - lo) / 255.0

        class FakeQuantHead(keras.layers.Layer):
            def build(self, _):
                self.kernel = self.add_weight(shape=kernel.shape, initializer=keras.initializers.Constant(kernel))
                self.bias = self.add_weight(shape=bias.shape, initializer=keras.initializers.Constant(bias))

            def call(self, x):
                scale = ops.maximum(ops.max(ops.abs(self.kernel), axis=0), 1e-8) / 127.0
                wq = self.kernel + ops.stop_gradient(ops.round(self.kernel / scale) * scale - self.kernel)
                logits = ops.clip(ops.matmul(x, wq) + self.bias, lo, hi)
                logits = logits + ops.stop_gradient(ops.round((logits - lo) / step) * step + lo - logits)
                return ops.softmax(logits)

        x = keras.Input((features.shape[1],))
        student = keras.Model(x, FakeQuantHead()(x))
        student.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.KLDivergence())
        student.fit(features, teacher, epochs=epochs, batch_size=len(features), verbose=0)
        tuned = keras.models.clone_model(model)
        tuned.set_weights(model.get_weights())
        tuned.get_layer("probabilities").set_weights([np.asarray(w) for w in student.layers[1].get_weights()])
        folded, _ = export.fold_preprocessing(tuned)
        path = export_saved_model(folded, Path(saved["tmp"]) / "head-qat")
        tuned_calibrated = tflite_build.calibrate(variants.BuildInputs(path, representative))
        same = {tflite_ranges.head_tensors(tuned_calibrated).logits: (lo, hi),
                tflite_ranges.head_tensors(tuned_calibrated).features: ranges[head.features]}
        return tflite_build.quantize_full_integer(tflite_ranges.with_ranges(tuned_calibrated, same))
    return build


REMEDIES: dict[str, tuple[str, Callable]] = {
    variants.REFERENCE: ("float", _build(variants.REFERENCE, fold=False)),
    "dynamic_int8": ("mixed", _build("dynamic_int8", fold=False)),
    "int8 plain (no fold)": ("int8-only", _build(variants.FULL_INTEGER, fold=False)),
    "int8 + preprocessing fold": ("int8-only", _build(variants.FULL_INTEGER)),
    "int8 + fold, 16 calibration photos": ("int8-only", _few_photos),
    "int8 + fold, per-tensor weights": ("int8-only", _per_tensor),
    "int8 + fold, logits range pct 99.9": ("int8-only", _head_ranges("logits", "percentile", 99.9)),
    "int8 + fold, logits range pct 99": ("int8-only", _head_ranges("logits", "percentile", 99.0)),
    "int8 + fold, logits range MSE": ("int8-only", _head_ranges("logits", "mse")),
    "int8 + fold, ranges pct 99.99 all activations": ("int8-only", _all_ranges("percentile", 99.99)),
    "int8 + fold, ranges pct 99.9 all activations": ("int8-only", _all_ranges("percentile", 99.9)),
    "int8 + fold, MSE ranges all activations": ("int8-only", _all_ranges("mse")),
    "int8 + fold, logits range from held-out-like photos": ("int8-only", _head_ranges("logits",
                                                                                      held_out_like=True)),
    "int8 + fold, logits and features ranges from held-out-like photos": ("int8-only", _head_ranges(
        "head", held_out_like=True)),
    "int8_head_range (shipped)": ("int8-only", _build("int8_head_range")),
    "int8 + fold, head in float": ("mixed", _group_in_float("head")),
    "int8 + fold + cross-layer equalization": ("int8-only", _equalized(variants.FULL_INTEGER)),
    "int8_head_range + cross-layer equalization": ("int8-only", _equalized("int8_head_range")),
    "int8 + fold, litert-quantizer min-max": ("int8-only", _litert("MIN_MAX_UNIFORM_QUANT")),
    "int8 + fold, litert-quantizer MSE weights": ("int8-only", _litert("MSE")),
    "int8 + fold, litert-quantizer OCTAV weights": ("int8-only", _litert("OCTAV")),
    "int8_head_range + head fine-tuned on int8 features (QAT, distilled)": ("int8-only", _head_qat()),
    "int16x8 + fold": ("int16", _build("int16x8")),
}


def _measure(model: bytes, images, labels, reference: np.ndarray | None, edible: np.ndarray, runs: int) -> dict:
    from mushroom.policy import edible_probability, top_classes

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        path.write_bytes(model)
        probs = TFLiteClassifier(path).predict(images)
        ms1 = measure_latency(path, images[0], num_threads=1, runs=runs)["median_ms"]
        ms_all = measure_latency(path, images[0], num_threads=os.cpu_count(), runs=runs)["median_ms"]
    ref = probs if reference is None else reference
    k = min(3, probs.shape[1] - 1)
    pred, ref_pred = top_classes(probs, 1)[:, 0], top_classes(ref, 1)[:, 0]
    ordered = np.sort(ref, axis=1)
    confident = (ordered[:, -1] - ordered[:, -2]) > 0.1
    same_set = [set(a) == set(b) for a, b in zip(top_classes(probs, k), top_classes(ref, k), strict=True)]
    verdict = [POLICY.verdict(float(p)) for p in edible_probability(probs, edible)]
    ref_verdict = [POLICY.verdict(float(p)) for p in edible_probability(ref, edible)]
    eps = 1e-7
    kl = np.sum(ref * (np.log(ref + eps) - np.log(probs + eps)), axis=1)
    return {"top1": float(np.mean(pred == labels)), "agreement": float(np.mean(pred == ref_pred)),
            "agreement_margin_0.1": float(np.mean(pred[confident] == ref_pred[confident])) if confident.any() else 1.0,
            f"top{k}_set_agreement": float(np.mean(same_set)),
            "verdict_agreement": float(np.mean([a == b for a, b in zip(verdict, ref_verdict, strict=True)])),
            "not_edible_share": float(np.mean([v == NOT_EDIBLE for v in ref_verdict])),
            "kl": float(np.mean(kl)), "nll": float(-np.mean(np.log(probs[np.arange(len(labels)), labels] + eps))),
            "size_mb": len(model) / 1e6, "ms_1": ms1, "ms_all": ms_all, "probs": probs.tolist()}


def run(arch: str, seed: int, args, data, cache: Path) -> dict[str, dict]:
    from mushroom.quantize import error_profile, export_saved_model

    images, labels, edible = data
    n_train = int(len(images) * 0.6)
    results_path = cache / f"{arch}-{args.size}px-{args.epochs}ep-seed{seed}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    wanted = [r for r in args.remedies if r not in results] + (["profile"] if args.profile and "profile" not in results
                                                              else [])
    if not wanted:
        return results
    model = _trained(arch, seed, images[:n_train], labels[:n_train], args.size, args.epochs, cache)
    folded, _ = export.fold_preprocessing(model)
    val, val_labels = images[n_train:], labels[n_train:]
    representative = images[:n_train][: args.representative]
    with tempfile.TemporaryDirectory() as tmp:
        saved = {False: export_saved_model(model, Path(tmp) / "plain"),
                 True: export_saved_model(folded, Path(tmp) / "folded") if folded is not model else None}
        saved[True] = saved[True] or saved[False]
        saved["keras"], saved["tmp"] = model, tmp
        order = [variants.REFERENCE] + [r for r in wanted if r not in (variants.REFERENCE, "profile")]
        for name in order:
            if name in results and name != variants.REFERENCE:
                continue
            start = time.monotonic()
            reference = None if name == variants.REFERENCE else np.array(results[variants.REFERENCE]["probs"])
            try:
                results[name] = {"class": REMEDIES[name][0], **_measure(
                    REMEDIES[name][1](saved, representative), val, val_labels, reference, edible, args.runs)}
            except Exception as err:  # noqa: BLE001 - one remedy failing must not end the sweep
                results[name] = {"class": REMEDIES[name][0], "error": str(err).splitlines()[0][:200]}
            print(f"[{arch} seed {seed}] {name}: agreement {results[name].get('agreement', float('nan')):.3f} "
                  f"({time.monotonic() - start:.0f}s)", file=sys.stderr)
            results_path.write_text(json.dumps(results))
        if "profile" in wanted:
            float_pred = np.array(results[variants.REFERENCE]["probs"]).argmax(1)
            for key, which in (("profile", False), ("profile_folded", True)):
                results[key] = error_profile(variants.BuildInputs(saved[which], representative), val, float_pred,
                                             args.profile_points)
                print(f"[{arch} seed {seed}] {key}: {results[key]['finding']}", file=sys.stderr)
            results_path.write_text(json.dumps(results))
    return results


def _print(arch: str, per_seed: list[dict], args) -> None:
    print(f"\n## {arch} at {args.size} px, {args.species} species, {args.epochs} epochs from scratch, "
          f"seeds {args.seeds}: mean over seeds\n")
    keys = ["top1", "agreement", "agreement_margin_0.1", "verdict_agreement", "kl", "nll", "size_mb", "ms_1", "ms_all"]
    set_key = next((k for k in per_seed[0].get(variants.REFERENCE, {}) if k.endswith("_set_agreement")), None)
    print("| remedy | class | val top-1 | agreement | per seed | agreement (margin > 0.1) | "
          f"{set_key or 'top-k set'} | verdict agreement | KL | NLL | MB | ms 1 thread | ms all |")
    print("|" + "---|" * 13)
    for name in args.remedies:
        rows = [r[name] for r in per_seed if name in r and "error" not in r[name]]
        if not rows:
            errors = [r[name]["error"] for r in per_seed if name in r and "error" in r[name]]
            print(f"| {name} | {REMEDIES[name][0]} | failed: {errors[:1]} |" + " |" * 10)
            continue
        mean = {k: float(np.mean([r[k] for r in rows])) for k in keys + ([set_key] if set_key else [])}
        seeds = " ".join(f"{r['agreement']:.2f}" for r in rows)
        print(f"| {name} | {rows[0]['class']} | {mean['top1']:.3f} | {mean['agreement']:.3f} | {seeds} | "
              f"{mean['agreement_margin_0.1']:.3f} | {mean[set_key] if set_key else float('nan'):.3f} | "
              f"{mean['verdict_agreement']:.3f} | {mean['kl']:.4f} | {mean['nll']:.3f} | {mean['size_mb']:.2f} | "
              f"{mean['ms_1']:.2f} | {mean['ms_all']:.2f} |")
    for r, seed in zip(per_seed, args.seeds, strict=True):
        for key in ("profile", "profile_folded"):
            if key in r:
                depth = ", ".join(f"{d['last_block']} {d['agreement']:.2f}" for d in r[key]["depth"])
                groups = ", ".join(f"{g['group']} {g['agreement']:.2f}" for g in r[key]["groups"])
                print(f"\nseed {seed} {key}: {r[key]['finding']}\n  int8 up to: {depth}\n  kept float: {groups}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=["resnet50", "efficientnetv2-b0"],
                        choices=backbones.names())
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--remedies", nargs="+", default=list(REMEDIES), choices=list(REMEDIES))
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--species", type=int, default=4)
    parser.add_argument("--photos", type=int, default=40, help="per species; 60%% train, 40%% val")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--representative", type=int, default=64, help="calibration photos (from train)")
    parser.add_argument("--profile", action="store_true", help="also the error profile (by depth, by op group)")
    parser.add_argument("--profile-points", type=int, default=6)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per latency figure")
    parser.add_argument("--cache", type=Path, default=Path("outputs/benchmarks/int8_agreement"))
    args = parser.parse_args(argv)
    args.remedies = [variants.REFERENCE] + [r for r in args.remedies if r != variants.REFERENCE]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"# Full int8 remedies on {os.cpu_count()} CPU core(s); synthetic photos, models from scratch")
    data = _dataset(args.species, args.photos, args.size)
    for arch in args.architectures:
        _print(arch, [run(arch, seed, args, data, args.cache) for seed in args.seeds], args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
