"""The verdict card: what ships and how safe it is, the first thing the report and the comparison show.

Every figure of the card is a count or a share with its denominator, so none reads as an empty
"0%": what the naive P(edible) >= 0.5 rule would do to dangerous photos, how many dangerous
photos have an edible species on top, how often held-out unknown species are named as a known
(and an edible) species, and the coverage. Plain data, no templates (:mod:`mushroom.report.html`
renders it); the glossary every page ends with is here too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from mushroom import variants as registry
from mushroom.formatting import DASH, fmt, pct

if TYPE_CHECKING:
    from mushroom.evaluation import Evaluation, VariantEvaluation

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without photos."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def share_with_interval(rate: float | None, n: int) -> str:
    """``0.944 (95% 0.884-0.974, 102 of 108)``; a dash when not measured."""
    if rate is None or n <= 0:
        return DASH
    k = round(rate * n)
    low, high = wilson(k, n)
    return f"{fmt(rate)} (95% {fmt(low)}-{fmt(high)}, {k} of {n})"


def count_of(rate: float | None, n: int) -> str:
    """``3.7% (2 of 54)``; says when there was nothing to count."""
    if n <= 0:
        return "not measured (no such photos)"
    if rate is None:
        return DASH
    return f"{pct(rate)} ({round(rate * n)} of {n})"


class Fact(NamedTuple):
    """One line of the card: a short label, the figure and, where it helps, what it means."""

    label: str
    value: str
    note: str = ""


class Verdict(NamedTuple):
    """The card's content."""

    key: str  # the evaluation key shown
    title: str
    recorded: bool  # False: the evaluation does not record what ships; the card shows a stand-in
    ships: list[Fact]
    accuracy: list[Fact]
    safety: list[Fact]
    summary: str  # the safety picture in one or two sentences


def shown_key(evaluation: Evaluation) -> tuple[str, bool]:
    """The variant the card is about and whether it is the recorded shipped one.

    Without a record (older evaluations), full int8, else the float32 reference, else the first.
    """
    if evaluation.shipped_key is not None:
        return evaluation.shipped_key, True
    for key in (registry.FULL_INTEGER_KEY, registry.REFERENCE_KEY):
        if key in evaluation.variants:
            return key, False
    return next(iter(evaluation.ordered())), False


def _variant_line(key: str) -> tuple[str, str]:
    name = registry.variant_of_key(key)
    if name is None:
        return key, "Keras model (not a TFLite file)"
    try:
        spec = registry.get(name)
    except (KeyError, ValueError):
        return name, ""
    kind = "integer-only (every op in integers)" if spec.integer_only else (
        "not integer-only (some ops in float)" if spec.integer else "float (no integer arithmetic)")
    return name, f"{kind}; {spec.description}"


def dangerous_edible_on_top(evaluation: Evaluation, variant: VariantEvaluation) -> tuple[int, int]:
    """Dangerous test photos whose top-1 species is edible, and the dangerous test photos.

    From the species confusion matrix (rows: true species, columns: top-1).
    """
    from mushroom.species import DANGEROUS

    matrix = variant.species.confusion_matrix
    dangerous = [i for i, e in enumerate(evaluation.edibility) if e in DANGEROUS]
    edible = [j for j, e in enumerate(evaluation.edibility) if e == "edible"]
    count = sum(matrix[i][j] for i in dangerous for j in edible if i < len(matrix) and j < len(matrix[i]))
    total = sum(sum(matrix[i]) for i in dangerous if i < len(matrix))
    return count, total


def unknown_species(variant: VariantEvaluation) -> tuple[int, float, float | None, bool] | None:
    """Held-out unknown-species photos: count, share named as known, share of those named edible.

    The fitting taxa stand in (last item False) where none is held out; None: no such photos.
    """
    from mushroom.negatives import UNKNOWN_SPECIES

    o = variant.open_set
    if o is None:
        return None
    kinds = [k for k in o.kinds.values() if k.group == UNKNOWN_SPECIES]
    held_out = [k for k in kinds if not k.fit]
    chosen = held_out or kinds
    photos = sum(k.photos for k in chosen)
    if not photos:
        return None
    named = sum(k.named_as_known * k.photos for k in chosen)
    edible = sum(k.named_as_known * k.photos * k.named_edible_share for k in chosen
                 if k.named_edible_share is not None)
    return photos, named / photos, (edible / named if named else None), bool(held_out)


def verdict(evaluation: Evaluation) -> Verdict:
    """The verdict card of the variant the evaluation's bundle ships."""
    key, recorded = shown_key(evaluation)
    v = evaluation.variants[key]
    name, kind = _variant_line(key)
    one_thread = v.latency.threads_1.median_ms if v.latency else None
    ships = [Fact("variant", name, kind),
             Fact("size", f"{fmt(v.size_mb, 2)} MB" if v.size_mb is not None else DASH),
             Fact("latency", f"{fmt(one_thread, 2)} ms" if one_thread is not None else DASH,
                  "median per photo on the CPU, 1 thread, batch 1")]
    n = evaluation.num_test_photos
    accuracy = [Fact("top-1 (test)", share_with_interval(v.top1, n)),
                Fact("top-5 (test)", share_with_interval(v.top5, n))]

    a = v.calibrated
    e, p = a.edibility, a.policy
    naive = e.naive_edible.dangerous_as_edible_rate
    on_top, dangerous = dangerous_edible_on_top(evaluation, v)
    safety = [
        Fact("naive rule (P(edible) >= 0.5) calls dangerous photos edible", count_of(naive, e.dangerous_photos),
             "what a plain classifier would say"),
        Fact("dangerous photos with an edible species on top", count_of(on_top / dangerous if dangerous else None,
                                                                        dangerous)),
        Fact("the shipped policy calls dangerous photos edible", count_of(e.dangerous_as_edible_rate,
                                                                          e.dangerous_photos),
             "the policy never says 'edible' (no threshold met the target)" if p.edible_threshold is None
             else f"edible only when P(edible) >= {fmt(p.edible_threshold, 4)}"),
        Fact("coverage (firm verdict, not 'uncertain')", count_of(p.coverage, e.photos),
             f"selective risk {pct(p.selective_risk)}"),
    ]
    unknown = unknown_species(v)
    if unknown is None:
        safety.append(Fact("unknown species named as a known species", "not measured",
                           "no unknown-species photos in this run: nothing says how it treats a species it does "
                           "not know"))
        unknown_words = "It was not tested on species it does not know."
    else:
        photos, named, edible_share, held_out = unknown
        which = "held-out unknown-species photos" if held_out else "unknown-species photos (fitting taxa: optimistic)"
        safety.append(Fact(f"{which} named as a known species", count_of(named, photos),
                           f"{pct(edible_share)} of those as an edible species" if edible_share is not None else ""))
        unknown_words = (f"Shown a species it does not know, it names a known one for {pct(named)} of the photos"
                         + (f", an edible one for {pct(edible_share)} of those." if edible_share else "."))
    if p.edible_threshold is None:
        policy_words = ("The shipped policy never says 'edible' on this data, so its dangerous-as-edible rate is 0 "
                        "by construction, not by skill.")
    else:
        policy_words = (f"The shipped policy calls {count_of(e.dangerous_as_edible_rate, e.dangerous_photos)} "
                        "of dangerous photos edible.")
    summary = (f"A plain classifier's P(edible) >= 0.5 would call {count_of(naive, e.dangerous_photos)} of the "
               f"dangerous test photos edible. {policy_words} {unknown_words} Never eat a mushroom on its word.")
    title = f"{evaluation.model_name} ships {name}" if recorded else (
        f"{evaluation.model_name}: the shipped variant is not recorded; showing {name}")
    return Verdict(key, title, recorded, ships, accuracy, safety, summary)


# --- the glossary every page ends with ----------------------------------------------------------------

GLOSSARY: list[tuple[str, str]] = [
    ("top-1, top-5", "share of test photos whose species is the first answer, or among the first five"),
    ("95% interval", "Wilson score interval of a share over the test photos: where the true rate plausibly lies"),
    ("dangerous", "poisonous or deadly in the catalog"),
    ("dangerous as edible", "share of dangerous photos given the verdict 'edible'"),
    ("naive rule", "'edible' whenever P(edible) >= 0.5, with no threshold and no veto: what a plain classifier "
                   "would do"),
    ("P(edible)", "the summed probability of the edible species"),
    ("coverage", "share of photos given a firm verdict ('edible' or 'not edible'), not 'uncertain - ask an expert'"),
    ("selective risk", "the error rate among the photos given a firm verdict, at a given coverage"),
    ("risk-coverage curve", "selective risk against coverage as the edible threshold moves"),
    ("ECE", "expected calibration error: the gap between confidence and accuracy, averaged over confidence bins "
            "(equal-mass: bins of equal photo counts)"),
    ("MCE", "maximum calibration error: the largest gap of any bin"),
    ("NLL", "negative log-likelihood of the true species: lower is better"),
    ("Brier", "mean squared error of the predicted probabilities"),
    ("temperature (T)", "logits are divided by T before the softmax; fitted on the validation split and kept only "
                        "where it lowers the held-out NLL, else T = 1 (calibrated = uncalibrated)"),
    ("macro F1", "the F1 score of each species, averaged with equal weight"),
    ("integer-only", "every op of the TFLite file runs in integers (integer-only NPUs, Edge TPUs)"),
    ("AUROC", "probability that a random known photo scores above a random unknown one (0.5: chance)"),
    ("FPR at 95% TPR (FPR95)", "share of unknown photos still accepted when the threshold keeps 95% of known photos "
                               "(lower is better)"),
    ("open-set score", "how much a photo looks like one of the known species; below its threshold identify answers "
                       "'not one of the species this model knows'"),
    ("quality gate", "the check before the model that refuses unusable photos (too small, near-uniform, far over- "
                     "or under-exposed)"),
    ("fitting negatives", "the unknown photos the open-set score is chosen on; the held-out ones only check it"),
    ("held out", "not used to choose anything, only to measure"),
    ("named as known", "share of unknown photos identify would answer with a known species (gate on)"),
    ("shipped variant", "the variant a bundle runs by default; the chosen configuration is the bundle the run "
                        "publishes"),
]


# --- the comparison: is a difference in accuracy more than noise? ---------------------------------------


def noise_note(evaluations: list[Evaluation], model_name: str, variant: str) -> str:
    """Whether the validation top-1 of every variant differs from the chosen one's by more than noise.

    Noise: the chosen variant's 95% Wilson interval on its configuration's validation photos; the
    other configurations are compared on theirs.
    """
    chosen = next((e for e in evaluations if e.model_name == model_name), None)
    v = chosen.variant(variant) if chosen is not None else None
    if chosen is None or v is None or v.validation is None or chosen.num_val_photos <= 0:
        return "No validation top-1 for the chosen variant: the plot's differences cannot be weighed against noise."
    n = chosen.num_val_photos
    low, high = wilson(round(v.validation.top1 * n), n)
    inside, outside = [], []
    for e in evaluations:
        for name, other in e.tflite_variants().items():
            if (e.model_name, name) == (model_name, variant) or other.validation is None:
                continue
            label = name if len(evaluations) == 1 else f"{e.model_name} {name}"
            top1 = other.validation.top1
            (inside if low <= top1 <= high else outside).append(f"{label} {fmt(top1)}")
    line = (f"Noise: the chosen {variant}'s validation top-1 {fmt(v.validation.top1)} has a 95% interval of "
            f"{fmt(low)}-{fmt(high)} on {n} photos (Wilson; one photo is {pct(1 / n, 2)}).")
    if not outside:
        return line + " Every other variant lies inside it: their accuracy differences are within noise."
    if inside:
        line += f" Within noise: {', '.join(inside)}."
    return line + f" Outside it: {', '.join(outside)}."
