"""The report's plots, as PNG bytes.

matplotlib is imported when a plot is drawn, with its object-oriented API and the Agg canvas
(no pyplot, no display, no global backend switch).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from mushroom.fileio import write_bytes_atomic
from mushroom.report.tables import assessments, focus_variants, latency, median_ms

if TYPE_CHECKING:
    from mushroom.evaluation import CalibrationMetrics, EdibilityMetrics, Evaluation, PolicyMetrics

PLOTS = "plots"  # the folder of PNG files next to a report
_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


class Plot(NamedTuple):
    """One plot: its caption and PNG bytes."""

    caption: str
    png: bytes


class Point(NamedTuple):
    """One TFLite variant in an accuracy-against-cost plot.

    Attributes:
        label: The variant name, written next to the point.
        top1: Top-1 accuracy on the split the plot shows (:func:`tflite_points`).
        size_mb: File size.
        latency_ms: Median latency with one thread (None: not measured).
        group: The configuration (one colour per group).
        photos: The photos top-1 is measured on (None: no interval is drawn).
    """

    label: str
    top1: float
    size_mb: float
    latency_ms: float | None
    group: str
    photos: int | None = None


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def save_plot(out_dir: str | Path, stem: str, png: bytes) -> Path:
    """Write ``png`` to ``out_dir/plots/<stem>.png`` atomically; returns the path."""
    path = Path(out_dir) / PLOTS / f"{stem}.png"
    write_bytes_atomic(path, png)
    return path


# --- one function per kind of plot ------------------------------------------------------------


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


def plot_reliability(blocks: dict[str, CalibrationMetrics], title: str) -> bytes:
    """Reliability diagrams side by side (before and after temperature scaling, or one panel where
    they are the same): accuracy bars, the bins' mean confidence as markers, photos per bin above."""
    fig = _figure(5.2 * len(blocks) + 0.6, 4.6)
    axes = fig.subplots(1, len(blocks), sharey=True)
    for ax, (stage, cal) in zip(np.atleast_1d(axes), blocks.items(), strict=True):
        bins = cal.reliability
        centers = [(b.lower + b.upper) / 2 for b in bins]
        width = bins[0].upper - bins[0].lower
        used = [b.count > 0 for b in bins]
        acc = [b.accuracy or 0.0 for b in bins]
        ax.bar([c for c, u in zip(centers, used, strict=True) if u], [a for a, u in zip(acc, used, strict=True) if u],
               width=width * 0.9, color="#4a90d9", edgecolor="#1f4e79", label="accuracy in the bin")
        ax.plot([c for c, b in zip(centers, bins, strict=True) if b.count],
                [b.confidence for b in bins if b.count], "D", color="#c0392b", markersize=5,
                label="mean confidence in the bin")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for x, a, b in zip(centers, acc, bins, strict=True):
            if b.count:
                ax.text(x, min(a, 1.0) + 0.015, str(b.count), ha="center", va="bottom", fontsize=8, color="#222")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{stage}: ECE {cal.ece:.3f}, mean conf. {cal.mean_confidence:.2f}, "
                     f"acc. {cal.accuracy:.2f}", fontsize=9)
        ax.legend(loc="upper left", fontsize=7.5)
        ax.grid(alpha=0.25)
    np.atleast_1d(axes)[0].set_ylabel("accuracy (numbers: photos in the bin)")
    fig.suptitle(title)
    return _png(fig)


def plot_risk_coverage(policies: dict[str, PolicyMetrics], target: float) -> bytes:
    """Dangerous-as-edible rate and selective risk against coverage, chosen point marked."""
    fig = _figure(11, 4.4)
    left, right = fig.subplots(1, 2)
    for i, (name, policy) in enumerate(policies.items()):
        color = _color(i)
        curve = policy.risk_coverage
        risk = [np.nan if r is None else r for r in curve.risk]
        left.plot(curve.coverage, risk, "-", color=color, label=name, alpha=0.85)
        right.plot(curve.coverage, curve.selective_risk, "-", color=color, label=name, alpha=0.85)
        for ax, chosen in ((left, policy.risk), (right, policy.selective_risk)):
            if chosen is not None:
                ax.plot([policy.coverage], [chosen], "o", color=color, markersize=8, markeredgecolor="black")
    left.axhline(target, color="red", linestyle=":", label=f"target {target:.1%} (on val)")
    left.set_xlabel("coverage (share of photos with a verdict)")
    left.set_ylabel("dangerous photos called edible")
    left.set_title("risk of the verdict 'edible' (dot: chosen threshold)", fontsize=9)
    right.set_xlabel("coverage (share of photos with a verdict)")
    right.set_ylabel("wrong verdicts among covered photos")
    right.set_title("selective risk (dot: chosen threshold)", fontsize=9)
    coverage = [c for p in policies.values() for c in p.risk_coverage.coverage]
    x_low = max(0.0, min(coverage, default=0.0) - 0.02)
    for ax, field, chosen, floor in ((left, "risk", "risk", target), (right, "selective_risk", "selective_risk", 0.0)):
        # fitted to the curves short of full coverage, where the last threshold (everything 'edible') jumps up
        body = [r for p in policies.values()
                for c, r in zip(p.risk_coverage.coverage, getattr(p.risk_coverage, field), strict=True)
                if r is not None and c < 0.995]
        every = [r for p in policies.values() for r in getattr(p.risk_coverage, field) if r is not None]
        points = [getattr(p, chosen) for p in policies.values() if getattr(p, chosen) is not None]
        top = _fitted_top([*body, *points, floor])
        peak = max(every, default=0.0)
        if peak > top:
            ax.annotate(f"off the axis: up to {peak:.0%}\nat full coverage", xy=(1.0, top), xytext=(-6, -6),
                        textcoords="offset points", ha="right", va="top", fontsize=7.5, color="#555")
        ax.set_xlim(x_low, 1.01)
        ax.set_ylim(-top * 0.03, top)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _fitted_top(values: list[float]) -> float:
    """The top of an axis fitted to ``values`` (at least 0.01, so an all-zero curve is still drawn)."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return max(0.01, max(finite, default=0.0) * 1.25)


def plot_edible_roc(edibility: dict[str, EdibilityMetrics]) -> bytes:
    """ROC curves of P(edible) per variant (a variant without a curve is left out)."""
    fig = _figure(5.5, 5)
    ax = fig.add_subplot()
    for i, (name, e) in enumerate(edibility.items()):
        if e.roc_curve is not None:
            ax.plot(e.roc_curve.fpr, e.roc_curve.tpr, color=_color(i), label=f"{name} (AUC {e.roc_auc:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="chance")
    ax.set_xlabel("false positive rate (not edible called edible)")
    ax.set_ylabel("true positive rate (edible called edible)")
    ax.set_title("ROC of P(edible)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _png(fig)


def _label_text(names: list[str], width: int = 32) -> str:
    """Names joined by commas, a new line where the line would pass ``width`` characters."""
    lines = [names[0]]
    for name in names[1:]:
        if len(lines[-1]) + 2 + len(name) <= width:
            lines[-1] += f", {name}"
        else:
            lines[-1] += ","
            lines.append(name)
    return "\n".join(lines)


def _coincident(pixels: list[tuple[float, float]], radius: float) -> list[list[int]]:
    """Indices of points drawn within ``radius`` pixels of a cluster's first point, in input order."""
    clusters: list[list[int]] = []
    for i, (x, y) in enumerate(pixels):
        home = next((c for c in clusters if abs(x - pixels[c[0]][0]) <= radius and abs(y - pixels[c[0]][1]) <= radius),
                    None)
        if home is None:
            clusters.append([i])
        else:
            home.append(i)
    return clusters


def _offsets(rows: int, step: float = 5.0):
    """Label offsets (points) and alignments, nearest first: beside, diagonal, above/below, then stacked."""
    yield from ((6, 0, "left", "center"), (-6, 0, "right", "center"), (5, 5, "left", "bottom"),
                (5, -5, "left", "top"), (-5, 5, "right", "bottom"), (-5, -5, "right", "top"),
                (0, 7, "center", "bottom"), (0, -7, "center", "top"))
    for k in range(1, rows + 1):
        for dy in (k * step, -k * step):
            yield 6, dy, "left", "center"
            yield -6, dy, "right", "center"


def _place_labels(ax, renderer, labels: list[tuple[str, tuple[float, float], str]], markers: list) -> None:
    """Annotate each ``(text, data point, colour)`` of ``labels`` on ``ax``, in order.

    Greedy and deterministic: each label takes the first of :func:`_offsets` whose box meets no
    label placed before it, lies inside the axes and covers no marker (``markers``: pixel boxes),
    in that order of importance; ties go to the nearer offset.
    """
    frame = ax.get_window_extent(renderer)
    placed: list = []
    for text, xy, color in labels:
        ann = ax.annotate(text, xy, textcoords="offset points", xytext=(0, 0), fontsize=7, color=color,
                          linespacing=1.1)
        best = None
        for offset in _offsets(12 * len(labels)):
            _move(ann, offset)
            box = ann.get_window_extent(renderer).padded(1.5)
            on_labels = sum(_overlap(box, other) for other in placed)
            on_markers = sum(_overlap(box, other) for other in markers)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            rank = (on_labels > 0, not inside, on_markers > 0, on_labels + on_markers)
            if best is None or rank < best[0]:
                best = (rank, box, offset)
            if rank == (False, False, False, 0):
                break
        _, box, offset = best
        _move(ann, offset)
        placed.append(box)


def _move(annotation, offset: tuple[float, float, str, str]) -> None:
    dx, dy, ha, va = offset
    annotation.set_position((dx, dy))
    annotation.set_horizontalalignment(ha)
    annotation.set_verticalalignment(va)


def _overlap(a, b) -> float:
    """The area two boxes share (0 when they only touch or are apart)."""
    return max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0)) * max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))


def accuracy_vs_cost_figure(points: list[Point], title: str, split: str = "test",
                            chosen: tuple[str, str] | None = None):
    """The figure of :func:`plot_accuracy_vs_cost`, laid out and labelled (a matplotlib ``Figure``).

    Points that would be drawn on top of each other (within 3 pixels, same configuration) share
    one label listing their names; every label is placed so that it covers no other label and
    no marker (:func:`_place_labels`).

    Args:
        points: The variants.
        title: The figure title.
        split: The split the top-1 accuracy is on (the y axis says so).
        chosen: ``(group, label)`` of a point to ring and name "chosen" in the legend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    groups = sorted({p.group for p in points})
    fig = _figure(11, 4.8)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    costs: tuple[tuple[Callable[[Point], float | None], str], ...] = (
        (lambda p: p.size_mb, "model file size (MB)"),
        (lambda p: p.latency_ms, "CPU latency per image, 1 thread, median (ms)"))
    colors = {group: _color(i) for i, group in enumerate(groups)}
    marker, ring = 7, 13  # marker sizes in points
    for ax, (cost, xlabel) in zip(axes, costs, strict=True):
        for group in groups:
            mine = [p for p in points if p.group == group and cost(p) is not None]
            if mine:
                ax.plot([cost(p) for p in mine], [p.top1 for p in mine], "o", color=colors[group], label=group,
                        markersize=marker, alpha=0.85)
                _intervals(ax, [(cost(p), p) for p in mine], colors[group])
        ring_at = [p for p in points if chosen == (p.group, p.label) and cost(p) is not None]
        if ring_at:
            ax.plot([cost(ring_at[0])], [ring_at[0].top1], "o", markerfacecolor="none", markeredgecolor="black",
                    markersize=ring, markeredgewidth=1.5, label="chosen")
        ax.margins(x=0.1, y=0.15)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"top-1 accuracy ({split})")
    for ax in axes:
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(title)
    # Lay out once and freeze limits and layout, so that the pixels computed below are where points are drawn.
    fig.canvas.draw()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    for ax, (cost, _) in zip(axes, costs, strict=True):
        labels, markers = [], []
        for group in groups:
            mine = [p for p in points if p.group == group and cost(p) is not None]
            pixels = [tuple(ax.transData.transform((cost(p), p.top1))) for p in mine]
            for cluster in _coincident(pixels, radius=3.0):
                first = mine[cluster[0]]
                color = colors[group] if len(groups) > 1 else "#222222"
                labels.append((_label_text([mine[i].label for i in cluster]), (cost(first), first.top1), color))
            for p, (x, y) in zip(mine, pixels, strict=True):
                half = (ring if chosen == (p.group, p.label) else marker) / 2 * fig.dpi / 72
                markers.append(Bbox.from_extents(x - half, y - half, x + half, y + half))
        _place_labels(ax, renderer, sorted(labels, key=lambda t: (t[1][0], -t[1][1], t[0])), markers)
    return fig


def _intervals(ax, placed: list[tuple[float, Point]], color: str) -> None:
    """95% Wilson intervals of each point's top-1, as vertical bars (points without photos: none)."""
    from mushroom.report.verdict import wilson

    for x, p in placed:
        if p.photos:
            low, high = wilson(round(p.top1 * p.photos), p.photos)
            ax.errorbar([x], [p.top1], yerr=[[max(0.0, p.top1 - low)], [max(0.0, high - p.top1)]], fmt="none",
                        ecolor=color, alpha=0.45, capsize=3, lw=1.2)


def plot_accuracy_vs_cost(points: list[Point], title: str, split: str = "test",
                          chosen: tuple[str, str] | None = None) -> bytes:
    """Top-1 accuracy against file size and against CPU latency (one thread), one colour per group.

    See :func:`accuracy_vs_cost_figure`: coincident points share a label, no two labels overlap.
    """
    return _png(accuracy_vs_cost_figure(points, title, split, chosen))


# --- the plots of one evaluation ------------------------------------------------------------------


def plot_openset_histogram(histogram: dict[str, list[float]], threshold: float | None, title: str) -> bytes:
    """Open-set score histograms: known test photos against each kind of negative, and the threshold.

    The evaluation bins a robust range (``histogram["range"]``: drawn and full span) and counts
    scores beyond it in the end bins; the plot says so. The x-axis spans the bins that hold photos
    and the threshold.
    """
    edges = np.asarray(histogram["edges"], dtype=np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    kinds = [k for k in histogram if k not in ("edges", "range")]
    fig = _figure(7.5, 4.0)
    ax = fig.add_subplot()
    filled = np.zeros(len(centers), bool)
    for i, kind in enumerate(kinds):
        counts = np.asarray(histogram[kind], dtype=np.float64)
        filled |= counts > 0
        share = counts / counts.sum() if counts.sum() else counts
        ax.plot(centers, share, drawstyle="steps-mid", color=_color(i), lw=2.4 if kind == "known_test" else 1.3,
                ls="-" if i < 8 else ":", label=f"{kind} ({int(counts.sum())})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label="threshold")
    if filled.any():
        first, last = np.flatnonzero(filled)[[0, -1]]
        lo, hi = edges[first], edges[last + 1]
        if threshold is not None and np.isfinite(threshold):
            lo, hi = min(lo, threshold), max(hi, threshold)
        pad = (hi - lo) * 0.03 or 1.0
        ax.set_xlim(lo - pad, hi + pad)
    label = "open-set score (higher: more like a known species)"
    span = histogram.get("range")
    if span and len(span) == 4:
        drawn_lo, drawn_hi, full_lo, full_hi = span
        clipped = []
        if full_lo < drawn_lo:
            clipped.append(f"scores down to {full_lo:.4g} counted in the first bin")
        if full_hi > drawn_hi:
            clipped.append(f"up to {full_hi:.4g} in the last bin")
        if clipped:
            label += "\nclipped to the bulk of the photos: " + ", ".join(clipped)
    ax.set_xlabel(label, fontsize=9)
    ax.set_ylabel("share of each kind's photos")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, ncol=2, title="kind (photos)", title_fontsize=7.5)
    return _png(fig)


def tflite_points(evaluation: Evaluation, split: str = "test") -> list[Point]:
    """Every TFLite variant of ``evaluation`` with a file size, in report order.

    ``split``: the top-1 accuracy of ``"test"`` or of ``"validation"`` (a variant without
    validation figures is then left out).
    """
    points = []
    for name, v in evaluation.tflite_variants().items():
        top1 = v.top1 if split == "test" else v.validation.top1 if v.validation else None
        if v.size_mb is not None and top1 is not None:
            photos = evaluation.num_test_photos if split == "test" else evaluation.num_val_photos
            points.append(Point(name, top1, v.size_mb, median_ms(latency(v)[0]), evaluation.model_name, photos))
    return points


def build_plots(evaluation: Evaluation) -> dict[str, Plot]:
    """Every plot of one evaluation, by file stem.

    Confusion matrices of the focus variants (:func:`focus_variants`), a reliability diagram per
    variant, risk-coverage, ROC of P(edible) and accuracy against size and latency.
    """
    variants = evaluation.ordered()
    plots: dict[str, Plot] = {}
    for key in focus_variants(evaluation):
        caption = f"Species confusion matrix, {key} (test split, rows normalised, counts in cells)"
        plots[f"confusion_{key}"] = Plot(caption, plot_confusion(variants[key].species.confusion_matrix,
                                                                  evaluation.species, f"{key}: confusion"))
    for key, v in variants.items():
        plots[f"reliability_{key}"] = Plot(
            f"Reliability diagram, {key}: before and after temperature scaling (T = {v.temperature:.2f}, "
            f"{evaluation.ece_bins} equal-width bins; bar labels: photos per bin)",
            plot_reliability({stage: a.calibration for stage, a in assessments(v).items()}, key))
    plots["risk_coverage"] = Plot(
        "Risk-coverage of the safety policy (calibrated; the edible threshold sweeps the test scores)",
        plot_risk_coverage({k: v.calibrated.policy for k, v in variants.items()},
                           evaluation.target_dangerous_as_edible))
    plots["edible_roc"] = Plot("ROC of P(edible), calibrated, test split",
                               plot_edible_roc({k: v.calibrated.edibility for k, v in variants.items()}))
    for key in focus_variants(evaluation):
        o = variants[key].open_set
        if o is not None:
            plots[f"openset_{key}"] = Plot(
                f"Open-set score ({o.score}) of known test photos and of each kind of negative, {key} "
                "(dashed: the threshold; photos left of it are answered 'not one of the known species')",
                plot_openset_histogram(o.histogram, o.threshold, f"{key}: open-set score"))
    points = tflite_points(evaluation)
    if points:
        plots["accuracy_vs_cost"] = Plot("Top-1 accuracy against size and CPU latency per TFLite variant (bars: 95% "
                                         "Wilson intervals on the test photos)",
                                         plot_accuracy_vs_cost(points, evaluation.model_name))
    return plots
