"""The evaluation report: one self-contained HTML file (plots embedded as PNG) and a Markdown summary.

Everything is drawn from ``evaluation.json`` alone (see :mod:`mushroom.evaluate`), so a
published evaluation can be re-rendered later. Plots use matplotlib's object-oriented API
with the Agg canvas (no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from mushroom.fileio import write_bytes_atomic, write_text_atomic

log = logging.getLogger(__name__)

REPORT = "report.html"
SUMMARY = "summary.md"
PLOTS = "plots"
COMPARISON_REPORT = "comparison.html"
SECTIONS = {
    "overview": "Overview",
    "species": "Species",
    "edibility": "Edibility",
    "calibration": "Calibration",
    "policy": "Safety policy",
    "speed": "Speed and size",
    "quantization": "Float32 to int8",
}
STAGES = ("uncalibrated", "calibrated")
_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
DASH = "\u2014"  # a missing value

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1150px;
color:#222;padding:0 1rem;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .55rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85rem;color:#555}.note{color:#555;font-size:.9rem}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.5rem .8rem}
nav a{margin-right:.9rem}
.scroll{overflow-x:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:0 1rem}
"""


# Report order: the Keras model, the float reference, then the smaller variants.
_ORDER = ("keras", "tflite_float32", "tflite_float16", "tflite_dynamic_int8", "tflite_int8", "tflite_int8_io",
          "tflite_int16x8", "tflite_int8_selective")


def _variants(evaluation: dict) -> dict[str, dict]:
    """The evaluation's variants in report order (known ones first, then the rest alphabetically)."""
    variants = evaluation["variants"]
    order = sorted(variants, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return {name: variants[name] for name in order}


def focus_variants(evaluation: dict) -> list[str]:
    """The variants shown in detail (per-species tables, confusion matrices): Keras, TFLite
    float32, int8 and the bundle's default variant, where present. Every variant is in the JSON."""
    wanted = ["keras", "tflite_float32", "tflite_int8", f"tflite_{evaluation.get('default_variant', 'int8')}"]
    return [n for n in _variants(evaluation) if n in wanted]


# --- formatting ----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table; an em dash for a missing value."""
    if value is None:
        return DASH
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}f}"


def pct(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{100 * float(value):.{digits}f}%"


def signed(value: float | None, digits: int = 3) -> str:
    """A change with its sign; a change that rounds to zero reads +0 (never -0)."""
    if value is None:
        return DASH
    rounded = round(float(value), digits) + 0.0
    return f"{rounded:+.{digits}f}"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --- plots ---------------------------------------------------------------------------------


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_confusion(matrix: list[list[int]], names: list[str], title: str) -> bytes:
    """Row-normalised confusion matrix (counts written in the cells when it is small)."""
    m = np.asarray(matrix, dtype=float)
    n = len(names)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(14.0, max(4.5, 0.28 * n + 3.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true species")
    size = 8 if n <= 12 else 6 if n <= 30 else 4
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    ax.set_xlabel("predicted species")
    ax.set_ylabel("true species")
    ax.set_title(title)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _png(fig)


def plot_reliability(blocks: dict[str, dict], title: str) -> bytes:
    """Reliability diagrams before and after temperature scaling, side by side."""
    fig = _figure(10, 4.4)
    axes = fig.subplots(1, len(blocks), sharey=True)
    for ax, (stage, cal) in zip(np.atleast_1d(axes), blocks.items(), strict=True):
        bins = cal["reliability"]
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        width = bins[0]["upper"] - bins[0]["lower"]
        acc = [b["accuracy"] or 0.0 for b in bins]
        conf = [b["confidence"] if b["count"] else np.nan for b in bins]
        counts = [b["count"] for b in bins]
        ax.bar(centers, acc, width=width * 0.95, color="#4a90d9", edgecolor="#1f4e79", label="accuracy")
        ax.bar(centers, np.nan_to_num(np.array(conf) - np.array(acc)), bottom=acc, width=width * 0.95,
               color="#f4a3a3", alpha=0.6, edgecolor="#c0392b", label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for x, c in zip(centers, counts, strict=True):
            if c:
                ax.text(x, 0.01, str(c), ha="center", va="bottom", fontsize=6, color="white")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{stage}: ECE {cal['ece']:.3f}, mean conf. {cal['mean_confidence']:.2f}, "
                     f"acc. {cal['accuracy']:.2f}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("accuracy")
    fig.suptitle(title)
    return _png(fig)


def plot_risk_coverage(curves: dict[str, dict], target: float) -> bytes:
    """Dangerous-as-edible rate and selective risk against coverage, chosen point marked."""
    fig = _figure(11, 4.4)
    left, right = fig.subplots(1, 2)
    for i, (name, policy) in enumerate(curves.items()):
        color = _color(i)
        curve = policy["risk_coverage"]
        risk = [np.nan if r is None else r for r in curve["risk"]]
        left.plot(curve["coverage"], risk, "-", color=color, label=name, alpha=0.85)
        right.plot(curve["coverage"], curve["selective_risk"], "-", color=color, label=name, alpha=0.85)
        if policy.get("risk") is not None:
            left.plot([policy["coverage"]], [policy["risk"]], "o", color=color, markersize=8,
                      markeredgecolor="black")
        if policy.get("selective_risk") is not None:
            right.plot([policy["coverage"]], [policy["selective_risk"]], "o", color=color, markersize=8,
                       markeredgecolor="black")
    left.axhline(target, color="red", linestyle=":", label=f"target {target:.1%} (on val)")
    left.set_xlabel("coverage (share of photos with a verdict)")
    left.set_ylabel("dangerous photos called edible")
    left.set_title("risk of the verdict 'edible' (dot: chosen threshold)", fontsize=9)
    right.set_xlabel("coverage (share of photos with a verdict)")
    right.set_ylabel("wrong verdicts among covered photos")
    right.set_title("selective risk (dot: chosen threshold)", fontsize=9)
    for ax in (left, right):
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_edible_roc(rocs: dict[str, dict | None]) -> bytes:
    """ROC curves of P(edible) (calibrated) per variant."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    for i, (name, roc) in enumerate(rocs.items()):
        if roc:
            ax.plot(roc["curve"]["fpr"], roc["curve"]["tpr"], color=_color(i),
                    label=f"{name} (AUC {roc['auc']:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="chance")
    ax.set_xlabel("false positive rate (not edible called edible)")
    ax.set_ylabel("true positive rate (edible called edible)")
    ax.set_title("ROC of P(edible)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_accuracy_vs_cost(points: list[dict[str, Any]], title: str) -> bytes:
    """Top-1 accuracy against file size and against CPU latency (one thread).

    Args:
        points: ``label``, ``top1``, ``size_mb``, ``latency_ms`` (may be None), ``group``.
    """
    fig = _figure(11, 4.4)
    axes = fig.subplots(1, 2, sharey=True)
    groups = sorted({p["group"] for p in points})
    for ax, key, xlabel in ((axes[0], "size_mb", "model file size (MB)"),
                            (axes[1], "latency_ms", "CPU latency per image, 1 thread, median (ms)")):
        for i, group in enumerate(groups):
            mine = sorted((p for p in points if p["group"] == group and p.get(key) is not None),
                          key=lambda p, key=key: p[key])
            if not mine:
                continue
            ax.plot([p[key] for p in mine], [p["top1"] for p in mine], "o", color=_color(i), label=group,
                    markersize=7, alpha=0.85)
            for p in mine:
                ax.annotate(p["label"], (p[key], p["top1"]), textcoords="offset points", xytext=(5, 5),
                            fontsize=7)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("top-1 accuracy (test)")
    fig.suptitle(title)
    return _png(fig)


def _tflite_points(evaluation: dict, group: str | None = None) -> list[dict[str, Any]]:
    points = []
    for name, v in _variants(evaluation).items():
        if "size_mb" not in v:
            continue
        latency = v.get("latency", {}).get("threads_1", {}).get("median_ms")
        points.append({"label": name.removeprefix("tflite_"), "top1": v["top1"], "size_mb": v["size_mb"],
                       "latency_ms": latency, "group": group or evaluation["model_name"]})
    return points


def build_plots(evaluation: dict) -> dict[str, tuple[str, bytes]]:
    """Every plot of one evaluation: file stem -> (caption, PNG bytes)."""
    variants = _variants(evaluation)
    plots: dict[str, tuple[str, bytes]] = {}
    for name in focus_variants(evaluation):
        v = variants[name]
        caption = f"Species confusion matrix, {name} (test split, rows normalised, counts in cells)"
        plots[f"confusion_{name}"] = (caption, plot_confusion(v["species"]["confusion_matrix"],
                                                              evaluation["species"], f"{name}: confusion"))
    for name, v in variants.items():
        plots[f"reliability_{name}"] = (
            f"Reliability diagram, {name}: before and after temperature scaling (T = {v['temperature']:.2f}, "
            f"{evaluation.get('ece_bins', 15)} equal-width bins; bar labels: photos per bin)",
            plot_reliability({s: v[s]["calibration"] for s in STAGES}, name))
    plots["risk_coverage"] = (
        "Risk-coverage of the safety policy (calibrated; the edible threshold sweeps the test scores)",
        plot_risk_coverage({n: v["calibrated"]["policy"] for n, v in variants.items()},
                           evaluation["target_dangerous_as_edible"]))
    rocs = {}
    for n, v in variants.items():
        e = v["calibrated"]["edibility"]
        rocs[n] = {"auc": e["roc_auc"], "curve": e["roc_curve"]} if e["roc_curve"] else None
    plots["edible_roc"] = ("ROC of P(edible), calibrated, test split", plot_edible_roc(rocs))
    points = _tflite_points(evaluation)
    if points:
        plots["accuracy_vs_cost"] = ("Top-1 accuracy against size and CPU latency per TFLite variant",
                                     plot_accuracy_vs_cost(points, evaluation["model_name"]))
    return plots


def _img(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


# --- tables ----------------------------------------------------------------------------------


def overview_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "top-1", "top-5", "macro F1", "ECE before -> after", "AUC P(edible)",
              "dangerous as edible", "coverage", "size MB", "latency ms (1 thread)"]
    rows = []
    for name, v in _variants(evaluation).items():
        cal = v["calibrated"]
        rows.append([
            name, fmt(v["top1"]), fmt(v["top5"]), fmt(v["species"]["macro_f1"]),
            f"{fmt(v['uncalibrated']['calibration']['ece'])} -> {fmt(cal['calibration']['ece'])}",
            fmt(cal["edibility"]["roc_auc"]), pct(cal["policy"]["risk"], 2), pct(cal["policy"]["coverage"]),
            fmt(v.get("size_mb"), 2), fmt(v.get("latency", {}).get("threads_1", {}).get("median_ms"), 2),
        ])
    return header, rows


def _species_tables(evaluation: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    variants = _variants(evaluation)
    keys = ("top1", "top3", "top5", "macro_precision", "macro_recall", "macro_f1")
    tables = [("Accuracy per variant",
               ["variant", "top-1", "top-3", "top-5", "macro precision", "macro recall", "macro F1"],
               [[n, *(fmt(v["species"][k]) for k in keys)] for n, v in variants.items()])]
    names = focus_variants(evaluation)
    per = {n: {r["species"]: r for r in variants[n]["species"]["per_species"]} for n in names}
    header = ["species", "edibility", "test photos", *(f"{n} P / R / F1" for n in names)]
    rows = []
    for row in variants[names[0]]["species"]["per_species"]:
        s = row["species"]
        rows.append([s, row["edibility"], str(row["support"]),
                     *(f"{fmt(per[n][s]['precision'], 2)} / {fmt(per[n][s]['recall'], 2)} / "
                       f"{fmt(per[n][s]['f1'], 2)}" for n in names)])
    tables.append(("Per species (precision / recall / F1)", header, rows))
    for name in names:
        pairs = variants[name]["species"]["most_confused"]
        tables.append((f"Most confused species pairs, {name}",
                       ["species A", "species B", "confusions", "A as B", "B as A"],
                       [[p["species"][0], p["species"][1], str(p["count"]), str(p["first_as_second"]),
                         str(p["second_as_first"])] for p in pairs] or [["(none)", "", "", "", ""]]))
    return tables


def _edibility_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "calibration", "AUC P(edible)", "verdict edible P / R / F1", "dangerous as edible",
              "naive (P >= 0.5) dangerous as edible", "deadly with edible top-1",
              "dangerous missing from top-5"]
    rows = []
    for name, v in _variants(evaluation).items():
        for stage in STAGES:
            e = v[stage]["edibility"]
            ve = e["verdict_edible"]
            rows.append([name, stage, fmt(e["roc_auc"]),
                         f"{fmt(ve['precision'], 2)} / {fmt(ve['recall'], 2)} / {fmt(ve['f1'], 2)}",
                         pct(e["dangerous_as_edible_rate"], 2),
                         pct(e["naive_edible"]["dangerous_as_edible_rate"], 2),
                         pct(e["deadly_top1_edible_rate"], 2), pct(e["dangerous_missing_from_top5_rate"], 2)])
    return header, rows


def _calibration_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "temperature", "calibration", "ECE", "MCE", "mean confidence", "std confidence",
              "accuracy", "NLL", "Brier"]
    rows = []
    for name, v in _variants(evaluation).items():
        for stage in STAGES:
            c = v[stage]["calibration"]
            t = v[stage]["policy"]["temperature"]
            rows.append([name, fmt(t, 3), stage, fmt(c["ece"]), fmt(c["mce"]), fmt(c["mean_confidence"]),
                         fmt(c["std_confidence"]), fmt(c["accuracy"]), fmt(c["nll"]), fmt(c["brier"])])
    return header, rows


def _policy_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "calibration", "edible threshold", "not edible below", "val: dangerous as edible",
              "val coverage", "test coverage", "test risk (dangerous as edible)", "test selective risk",
              "edible / not edible / uncertain"]
    rows = []
    for name, v in _variants(evaluation).items():
        for stage in STAGES:
            p = v[stage]["policy"]
            counts = " / ".join(str(c) for c in p["verdicts"].values())
            threshold = "never edible" if p["edible_threshold"] is None else fmt(p["edible_threshold"], 4)
            rows.append([name, stage, threshold, fmt(p["not_edible_below"], 3),
                         pct(p["val_dangerous_as_edible_rate"], 2), pct(p["val_coverage"]),
                         pct(p["coverage"]), pct(p["risk"], 2), pct(p["selective_risk"]), counts])
    return header, rows


def _speed_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    header = ["variant", "size MB", "size vs float32", "1 thread median / p90 ms",
              "all cores median / p90 ms", "latency vs float32 (1 thread / all)"]
    rows = []
    for name, v in _variants(evaluation).items():
        if "size_mb" not in v:
            continue
        lat = v.get("latency", {})
        one, every = lat.get("threads_1", {}), lat.get("threads_all", {})
        ref = v.get("vs_float32")
        if ref is None:  # the reference itself (or no float32 to compare with)
            size_ratio, latency_ratio = DASH if name != "tflite_float32" else "1.000", "1.00 / 1.00"
        else:
            size_ratio = fmt(ref.get("size_ratio"), 3)
            latency_ratio = (f"{fmt(ref.get('latency_ratio_threads_1'), 2)} / "
                             f"{fmt(ref.get('latency_ratio_threads_all'), 2)}")
        rows.append([name, fmt(v["size_mb"], 3), size_ratio,
                     f"{fmt(one.get('median_ms'), 2)} / {fmt(one.get('p90_ms'), 2)}",
                     f"{fmt(every.get('median_ms'), 2)} / {fmt(every.get('p90_ms'), 2)}", latency_ratio])
    return header, rows


def quantization_rows(evaluation: dict) -> tuple[list[str], list[list[str]]]:
    """Absolute and relative change of each variant against TFLite float32."""
    header = ["variant", "top-1 change (abs / rel)", "top-5 change (abs / rel)", "macro F1 change",
              "ECE change (calibrated)", "top-1 agreement with float32", "size ratio",
              "latency ratio (1 thread)"]
    rows = []
    for name, v in _variants(evaluation).items():
        d = v.get("vs_float32")
        if not d:
            continue
        rows.append([name, f"{signed(d['top1_change']['absolute'])} / {pct(d['top1_change']['relative'])}",
                     f"{signed(d['top5_change']['absolute'])} / {pct(d['top5_change']['relative'])}",
                     signed(d["macro_f1_change"]["absolute"]), signed(d["ece_change"]["absolute"]),
                     pct(d.get("top1_agreement")), fmt(d.get("size_ratio")),
                     fmt(d.get("latency_ratio_threads_1"))])
    return header, rows


# --- documents ---------------------------------------------------------------------------------


def _settings_line(evaluation: dict) -> str:
    lat = evaluation.get("latency_settings")
    e = evaluation
    line = (f"{e['model_name']} ({e['architecture']}, {e['image_size']} px, {e['num_classes']} species); "
            f"test split {e['num_test_photos']} photos; temperature and safety threshold fitted on the "
            f"validation split ({e['num_val_photos']} photos) with a dangerous-as-edible target of "
            f"{e['target_dangerous_as_edible']:.1%}. Default variant (used by identify): "
            f"{e.get('default_variant', 'int8')}.")
    if lat:
        line += (f" Latency: batch 1, {lat['warmup']} warm-up and {lat['runs']} timed runs, 1 thread and "
                 f"{lat['threads_all']} threads.")
    return line


def render_html(evaluation: dict, plots: dict[str, tuple[str, bytes]]) -> str:
    """The self-contained HTML report (no external resources)."""
    def table(rows_fn) -> str:
        return _html_table(*rows_fn(evaluation))

    def figs(prefix: str, grid: bool = False) -> str:
        images = "".join(_img(png, caption) for stem, (caption, png) in plots.items()
                         if stem.startswith(prefix))
        return f"<div class='grid'>{images}</div>" if grid else images

    parts = [f"<h1>Evaluation: {html.escape(evaluation['model_name'])}</h1>",
             f"<p class='note'>{html.escape(_settings_line(evaluation))}</p>",
             "<nav>" + "".join(f"<a href='#{k}'>{v}</a>" for k, v in SECTIONS.items()) + "</nav>"]
    parts += [f"<h2 id='overview'>{SECTIONS['overview']}</h2>", table(overview_rows),
              "<p class='note'>ECE before -> after temperature scaling; safety columns are for the "
              "calibrated policy on the test split. Coverage: share of photos given a verdict other than "
              "'uncertain - ask an expert'.</p>"]
    parts.append(f"<h2 id='species'>{SECTIONS['species']}</h2>")
    for title, header, rows in _species_tables(evaluation):
        parts += [f"<h3>{html.escape(title)}</h3>", _html_table(header, rows)]
    parts.append(figs("confusion_", grid=evaluation["num_classes"] <= 20))
    parts += [f"<h2 id='edibility'>{SECTIONS['edibility']}</h2>",
              "<p class='note'>Edible = catalog edibility 'edible'; inedible, poisonous and deadly are not "
              "edible. P(edible) is the summed probability of the edible species. The verdict 'edible' uses "
              "the safety policy's threshold; the naive column says 'edible' whenever P(edible) >= 0.5.</p>",
              table(_edibility_rows), figs("edible_roc")]
    parts += [f"<h2 id='calibration'>{SECTIONS['calibration']}</h2>", table(_calibration_rows),
              figs("reliability_")]
    parts += [f"<h2 id='policy'>{SECTIONS['policy']}</h2>",
              "<p class='note'>The verdict is 'edible' only when P(edible) reaches the threshold chosen on "
              "the validation split; below 'not edible below' it is 'not edible'; in between 'uncertain - "
              "ask an expert'. 'never edible': no threshold met the target on the validation split.</p>",
              table(_policy_rows), figs("risk_coverage")]
    parts += [f"<h2 id='speed'>{SECTIONS['speed']}</h2>", table(_speed_rows), figs("accuracy_vs_cost")]
    header, rows = quantization_rows(evaluation)
    parts += [f"<h2 id='quantization'>{SECTIONS['quantization']}</h2>",
              _html_table(header, rows) if rows else "<p>No TFLite float32 reference.</p>"]
    return _document(f"Evaluation {evaluation['model_name']}", "\n".join(parts))


def _document(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def render_summary(evaluation: dict) -> str:
    """A short Markdown summary: overview, safety and the float32 -> int8 change."""
    lines = [f"# Evaluation: {evaluation['model_name']}", "", _settings_line(evaluation), "",
             _md_table(*overview_rows(evaluation))]
    for title, rows_fn in (("Safety policy", _policy_rows), ("Edibility", _edibility_rows),
                           ("Calibration", _calibration_rows), ("Speed and size", _speed_rows)):
        lines += ["", f"## {title}", "", _md_table(*rows_fn(evaluation))]
    header, rows = quantization_rows(evaluation)
    if rows:
        lines += ["", "## Float32 to int8", "", _md_table(header, rows)]
    return "\n".join(lines) + "\n"


def write_report(evaluation: dict, out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.html``, ``summary.md`` and ``plots/*.png`` into ``out_dir``.

    Returns:
        ``{"html": path, "markdown": path, "plots": {stem: path}}``.
    """
    out_dir = Path(out_dir)
    plots = build_plots(evaluation)
    paths = {}
    for stem, (_, png) in plots.items():
        paths[stem] = out_dir / PLOTS / f"{stem}.png"
        write_bytes_atomic(paths[stem], png)
    write_text_atomic(out_dir / REPORT, render_html(evaluation, plots))
    write_text_atomic(out_dir / SUMMARY, render_summary(evaluation))
    log.info("report: wrote %s, %s and %d plots", out_dir / REPORT, out_dir / SUMMARY, len(plots))
    return {"html": out_dir / REPORT, "markdown": out_dir / SUMMARY, "plots": paths}


# --- comparison across configurations ------------------------------------------------------------


def comparison_rows(evaluations: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per configuration and variant: accuracy, size, latency and change vs float32."""
    header = ["model", "architecture", "px", "variant", "top-1", "top-5", "macro F1", "ECE (calibrated)",
              "dangerous as edible", "coverage", "size MB", "latency ms 1 thread / all",
              "top-1 vs float32 (abs / rel)", "top-5 vs float32 (abs / rel)", "size vs float32",
              "latency vs float32 (1 thread)"]
    rows = []
    for e in evaluations:
        for name, v in _variants(e).items():
            lat = v.get("latency", {})
            d = v.get("vs_float32", {})
            top1, top5 = (f"{signed(d[k]['absolute'])} / {pct(d[k]['relative'])}" if d else DASH
                          for k in ("top1_change", "top5_change"))
            rows.append([
                e["model_name"], e["architecture"], str(e["image_size"]), name, fmt(v["top1"]),
                fmt(v["top5"]),
                fmt(v["species"]["macro_f1"]), fmt(v["calibrated"]["calibration"]["ece"]),
                pct(v["calibrated"]["policy"]["risk"], 2), pct(v["calibrated"]["policy"]["coverage"]),
                fmt(v.get("size_mb"), 2),
                f"{fmt(lat.get('threads_1', {}).get('median_ms'), 2)} / "
                f"{fmt(lat.get('threads_all', {}).get('median_ms'), 2)}" if lat else DASH,
                top1, top5,
                fmt(d.get("size_ratio")), fmt(d.get("latency_ratio_threads_1")),
            ])
    return header, rows


def write_comparison_report(evaluations: list[dict], best: str, out_dir: str | Path) -> Path:
    """Write ``comparison.html`` (table plus accuracy against size and latency) into ``out_dir``."""
    out_dir = Path(out_dir)
    points = [p for e in evaluations for p in _tflite_points(e)]
    plot = plot_accuracy_vs_cost(points, "Every configuration and TFLite variant (test split)")
    write_bytes_atomic(out_dir / PLOTS / "comparison_accuracy_vs_cost.png", plot)
    body = "\n".join([
        "<h1>Model comparison</h1>",
        f"<p class='note'>Chosen: <b>{html.escape(best)}</b> (highest int8 top-1 on the test split; ties: "
        "smaller int8 file). Changes are relative to the same configuration's TFLite float32 model.</p>",
        "<h2 id='comparison'>Accuracy, safety, size and speed</h2>",
        _html_table(*comparison_rows(evaluations)),
        "<h2 id='tradeoff'>Accuracy against size and latency</h2>",
        _img(plot, "Top-1 accuracy against file size and CPU latency (1 thread, median), per configuration"),
    ])
    write_text_atomic(out_dir / COMPARISON_REPORT, _document("Model comparison", body))
    return out_dir / COMPARISON_REPORT
