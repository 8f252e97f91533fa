"""The automatic choice of a quantized variant (pure logic, no conversion)."""

import numpy as np
import pytest

from mushroom.quantize import MeasuredVariant, choose_variant, format_report, representative_indices


def _c(name, top1, ms, size_bytes=1000):
    return MeasuredVariant(name, b"x" * size_bytes, top1, 1.0, ms, np.zeros(1))


def test_fastest_integer_variant_within_tolerance_wins():
    candidates = {"float32": _c("float32", 0.90, 10.0, 4000), "int8": _c("int8", 0.88, 4.0),
                  "dynamic_int8": _c("dynamic_int8", 0.899, 7.0), "int8_selective": _c("int8_selective", 0.897, 5.0)}
    name, reason = choose_variant(candidates, tolerance_points=1.0)
    assert name == "int8_selective"  # int8 is faster but loses 2 points
    assert "int8 (-2.0 pts, agreement 1.000)" in reason and "dynamic_int8 7.00 ms" in reason


def test_variant_that_changes_many_answers_is_rejected_even_at_equal_top1():
    candidates = {"float32": _c("float32", 0.90, 10.0, 4000), "int8": _c("int8", 0.90, 4.0),
                  "dynamic_int8": _c("dynamic_int8", 0.90, 7.0)}
    candidates["int8"].agreement = 0.90  # same accuracy, but one answer in ten changed
    name, reason = choose_variant(candidates, tolerance_points=1.0, min_agreement=0.97)
    assert name == "dynamic_int8" and "int8 (+0.0 pts, agreement 0.900)" in reason


def test_choice_notices_integer_slower_than_float():
    candidates = {"float32": _c("float32", 0.90, 5.0, 4000), "int8": _c("int8", 0.90, 9.0),
                  "dynamic_int8": _c("dynamic_int8", 0.90, 12.0)}
    name, reason = choose_variant(candidates, 1.0)
    assert name == "int8" and "slower than float32" in reason


def test_no_integer_variant_within_tolerance_keeps_float32():
    candidates = {"float32": _c("float32", 0.90, 5.0), "int8": _c("int8", 0.80, 2.0)}
    name, reason = choose_variant(candidates, 1.0)
    assert name == "float32" and "no integer variant" in reason


def test_ties_in_latency_go_to_the_smaller_file():
    candidates = {"float32": _c("float32", 0.9, 5.0, 4000), "int8": _c("int8", 0.9, 3.0, 1000),
                  "int8_io": _c("int8_io", 0.9, 3.0, 900)}
    assert choose_variant(candidates, 1.0)[0] == "int8_io"


def test_report_markdown_lists_variants_choice_and_worst_layers():
    report = {"validation_photos": 10, "representative_samples": 5, "latency_threads": 2,
              "variants": {"float32": {"size_mb": 4.0, "top1": 0.9, "top1_loss_points": 0.0,
                                       "agreement_with_float32": 1.0, "latency_ms": 5.0}},
              "reason": "int8: because", "layer_errors": [{"op_name": "CONV_2D", "tensor_name": "t1",
                                                           "rmse_over_scale": 3.2}]}
    text = format_report(report)
    assert "| float32 | 4.00 | 0.900 |" in text and "**Chosen:** int8: because" in text and "`t1` | 3.20" in text


def test_report_markdown_shows_the_fold_and_where_answers_flip():
    from mushroom.quantize import _finding

    depth = [{"blocks_quantized": 1, "last_block": "stem", "agreement": 0.99},
             {"blocks_quantized": 3, "last_block": "block2a", "agreement": 0.97},
             {"blocks_quantized": 5, "last_block": "head", "agreement": 0.88}]
    groups = [{"group": "squeeze-excite", "ops": 40, "agreement": 0.91},
              {"group": "head", "ops": 3, "agreement": 0.95}]
    finding = _finding(depth, groups, 0.88)
    assert finding == ("answers flip through depth: the stem alone changes 1.0%, full int8 12.0%; the largest "
                       "step (9.0%) comes with the blocks after block2a up to head; keeping the head in float "
                       "lifts agreement most (88.0% -> 95.0%)")
    at_input = _finding([{"blocks_quantized": 1, "last_block": "stem", "agreement": 0.4}, depth[-1]], [], 0.35)
    assert at_input.startswith("answers flip at the input: quantizing only the stem already changes 60.0%")
    report = {"validation_photos": 10, "representative_samples": 5, "latency_threads": 2,
              "variants": {"float32": {"size_mb": 4.0, "top1": 0.9, "top1_loss_points": 0.0,
                                       "agreement_with_float32": 1.0, "latency_ms": 5.0}},
              "reason": "int8: because", "preprocessing_fold": "channel flip folded into `conv1_conv`",
              "error_profile": {"blocks": ["stem", "block2a", "head"], "depth": depth, "groups": groups,
                                "full_int8_agreement": 0.88, "finding": finding}}
    text = format_report(report)
    assert "**Preprocessing:** channel flip folded into `conv1_conv`" in text
    assert "| 3 | `block2a` | 0.970 |" in text and "| squeeze-excite | 40 | 0.910 |" in text
    assert 'x-axis ["stem", "block2a", "head"]' in text and "line [0.990, 0.970, 0.880]" in text


def test_int8_only_variant_wins_over_a_faster_mixed_one_within_measurement_slack():
    candidates = {"float32": _c("float32", 0.90, 10.0, 4000), "int8": _c("int8", 0.90, 4.1),
                  "dynamic_int8": _c("dynamic_int8", 0.90, 4.0), "int16x8": _c("int16x8", 0.90, 3.95)}
    name, reason = choose_variant(candidates, tolerance_points=1.0)
    assert name == "int8" and reason.startswith("int8: fastest int8-only variant")


def test_int8_only_is_shipped_when_not_slower_than_dynamic_range_though_selective_measured_faster():
    # The demo's EfficientNetV2-B0 with two stages sharing the cores: latencies are noisy.
    candidates = {"float32": _c("float32", 0.944, 2.4, 4000), "int8": _c("int8", 0.944, 0.73),
                  "int8_selective": _c("int8_selective", 0.944, 0.52), "dynamic_int8": _c("dynamic_int8", 0.944, 1.29)}
    name, reason = choose_variant(candidates, tolerance_points=1.0)
    assert name == "int8" and reason.startswith("int8: fastest int8-only variant")


def test_clearly_faster_mixed_variant_wins_and_the_reason_says_int8_only_was_slower():
    # MobileNetV3 on this CPU: hard-swish has no fast int8 kernel, dynamic range is faster.
    candidates = {"float32": _c("float32", 0.90, 5.0, 4000), "int8": _c("int8", 0.90, 6.0),
                  "dynamic_int8": _c("dynamic_int8", 0.90, 4.0)}
    name, reason = choose_variant(candidates, tolerance_points=1.0)
    assert name == "dynamic_int8" and "int8-only int8 is more than 5% slower than dynamic-range dynamic_int8" in reason


def test_int8_only_head_range_variant_is_chosen_when_plain_int8_changes_answers():
    candidates = {"float32": _c("float32", 0.40, 9.0), "int8": _c("int8", 0.40, 2.1),
                  "int8_head_range": _c("int8_head_range", 0.40, 2.2)}
    candidates["int8"].agreement, candidates["int8_head_range"].agreement = 0.875, 0.984
    name, reason = choose_variant(candidates, tolerance_points=1.0, min_agreement=0.97)
    assert name == "int8_head_range" and "int8 (+0.0 pts, agreement 0.875)" in reason


def test_report_markdown_shows_replaced_head_ranges():
    report = {"validation_photos": 10, "representative_samples": 5, "latency_threads": 2,
              "variants": {"float32": {"size_mb": 4.0, "top1": 0.9, "top1_loss_points": 0.0,
                                       "agreement_with_float32": 1.0, "latency_ms": 5.0}},
              "reason": "int8_head_range: because",
              "head_ranges": {"probabilities/BiasAdd": {"calibrated": (-26.0, 67.06), "held_out_like": (-3.49, 6.23)}}}
    assert ("`probabilities/BiasAdd` [-26.00, 67.06] -> [-3.49, 6.23]" in format_report(report))


def test_representative_set_covers_every_species_or_stops_before_conversion():
    labels = np.repeat(np.arange(4), 10)
    names = ["Amanita muscaria", "Boletus edulis", "Amanita phalloides", "Morchella esculenta"]
    picked = representative_indices(labels, 8, seed=0, names=names)
    assert sorted(np.bincount(labels[picked]).tolist()) == [2, 2, 2, 2]
    with pytest.raises(ValueError, match=r"no photo of 1 of 4 species \(Morchella esculenta\).*at least 4"):
        representative_indices(labels, 3, seed=0, names=names)
    with pytest.raises(ValueError, match="Morchella esculenta"):  # a species with no train photos at all
        representative_indices(labels[labels < 3], 300, seed=0, names=names)
