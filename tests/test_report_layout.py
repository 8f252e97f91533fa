"""The comparison reads well: no overlapping plot labels, a table that fits, the chosen bundle's test figures only."""

from __future__ import annotations

from html.parser import HTMLParser
from itertools import combinations

import pytest

from mushroom import variants as registry
from mushroom.report.plots import Point, accuracy_vs_cost_figure
from tests.helpers import copy_evaluation, synthetic_evaluation

# Realistic quantized variants: the four full-integer ones share size and top-1.
VARIANTS = [("float32", 12.0, 0.812, 21.0), ("float16", 6.0, 0.812, 20.4), ("dynamic_int8", 3.3, 0.806, 9.1),
            ("int8", 3.5, 0.801, 6.1), ("int8_io", 3.5, 0.801, 6.1), ("int8_head_range", 3.5, 0.801, 6.3),
            ("int8_selective", 3.5, 0.801, 6.2)]


def _points(group: str = "mobilenet_v3-224", shift: float = 0.0) -> list[Point]:
    return [Point(name, top1 - shift, size, ms * (1 + shift), group) for name, size, top1, ms in VARIANTS]


def _labels(points: list[Point], chosen=None) -> list[list[tuple[str, object]]]:
    """Per axes: every label's text and its box in pixels, after drawing with Agg."""
    fig = accuracy_vs_cost_figure(points, "a title", "validation", chosen)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [[(t.get_text(), t.get_window_extent(renderer)) for t in ax.texts] for ax in fig.axes]


def _overlap(a, b) -> bool:
    return min(a.x1, b.x1) > max(a.x0, b.x0) and min(a.y1, b.y1) > max(a.y0, b.y0)


@pytest.mark.parametrize("groups", [1, 2], ids=["one configuration", "two configurations"])
def test_accuracy_vs_cost_labels_never_overlap_and_name_every_variant_once(groups):
    points = [p for i in range(groups) for p in _points(f"config-{i}", shift=0.004 * i)]
    axes = _labels(points, chosen=("config-0", "int8"))
    assert len(axes) == 2
    for labels in axes:
        for (text_a, a), (text_b, b) in combinations(labels, 2):
            assert not _overlap(a, b), f"{text_a!r} overlaps {text_b!r}"
        names = [name.strip() for text, _ in labels for name in text.split(",")]
        assert sorted(names) == sorted(p.label for p in points)  # each name exactly once per configuration
    if groups == 1:  # the points that coincide share one label
        size_labels = [text for text, _ in axes[0]]
        assert len(size_labels) == 4 and "int8, int8_io, int8_head_range," in " ".join(size_labels)


def test_accuracy_vs_cost_labels_are_placed_deterministically():
    def boxes():
        return [[(text, tuple(box.extents.round(2))) for text, box in labels] for labels in _labels(_points())]

    assert boxes() == boxes()


# --- the comparison pages ---------------------------------------------------------------------


class _Tables(HTMLParser):
    """Every table of a page: the id of the heading above it, header cells, rows (cells, class)."""

    def __init__(self):
        super().__init__()
        self.tables: list[dict] = []
        self.classes: list[str] = []
        self._section, self._cell, self._row = "", None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.classes += (attrs.get("class") or "").split()
        if tag == "h2":
            self._section = attrs.get("id", "")
        elif tag == "table":
            self.tables.append({"section": self._section, "header": [], "rows": []})
        elif tag == "tr":
            self._row = ([], attrs.get("class"))
        elif tag in ("th", "td"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self._row[0].append(self._cell)
            self._cell = None
        elif tag == "tr":
            cells, css = self._row
            table = self.tables[-1]
            if not table["header"]:
                table["header"] = cells
            else:
                table["rows"].append((cells, css))


def _html_tables(text: str) -> _Tables:
    page = _Tables()
    page.feed(text)
    return page


def _md_table(markdown: str, heading: str) -> list[list[str]]:
    """The first Markdown table under ``## heading``: header then rows, cells stripped."""
    section = markdown.split(f"## {heading}\n", 1)[1]
    lines = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines if not line.startswith("|---")]


@pytest.fixture(scope="module")
def three_configurations(tmp_path_factory):
    """Three configurations shipping int8; "beta" wins on validation; each has a distinctive test top-1."""
    root = tmp_path_factory.mktemp("layout")
    base = synthetic_evaluation(root / "base", n_classes=6)
    val = base.variant(registry.FULL_INTEGER).validation.top1
    return [copy_evaluation(base, "alpha", top1=0.4321),
            copy_evaluation(base, "beta", val_top1=val + 0.01, top1=0.6543),
            copy_evaluation(base, "gamma", top1=0.2109)]


@pytest.fixture(scope="module")
def written(three_configurations, tmp_path_factory):
    from mushroom.report import compare_evaluations

    comparison = compare_evaluations(three_configurations)
    paths = comparison.write(tmp_path_factory.mktemp("out"))
    return comparison, paths["html"].read_text(encoding="utf-8"), paths["markdown"].read_text(encoding="utf-8")


def test_the_main_comparison_table_fits_with_size_and_latency_first(written):
    comparison, html, markdown = written
    assert (comparison.best, comparison.choice.shipped_variant) == ("beta", "int8")
    page = _html_tables(html)
    assert "scroll" not in page.classes  # nothing on the page sits in a sideways-scrolling box
    main = next(t for t in page.tables if t["section"] == "comparison")
    md = _md_table(markdown, "Validation split: every configuration and variant")
    for header in (main["header"], md[0], comparison.summary["table"]["header"]):
        assert len(header) <= 10, header
        assert header.index("size MB") < 5 and header.index("latency ms (1 thread, median)") < 5
    chosen = [cells for cells, css in main["rows"] if css == "chosen"]
    assert len(chosen) == 1 and chosen[0][:2] == ["beta", "tflite_int8"] and chosen[0][-1] == "CHOSEN"
    assert [row[:2] for row in md[1:] if "**CHOSEN**" in row] == [["**beta**", "**tflite_int8**"]]
    assert "Chosen: <b>beta</b>, variant <b>int8</b>" in html and "Chosen: **beta**, variant **int8**" in markdown
    assert all(len(t["header"]) <= 10 for t in page.tables)  # the secondary tables fit too


def test_the_comparison_shows_test_figures_of_the_chosen_bundle_only(written, three_configurations):
    comparison, html, markdown = written
    for document in (html, markdown):
        assert "Test split, read once for the chosen bundle" in document
        assert "Test figures of the other configurations and variants are not shown here" in document
        assert "0.654" in document  # beta's test top-1
        assert "0.432" not in document and "0.211" not in document  # alpha's and gamma's are not
    [test] = [t for t in _html_tables(html).tables if t["section"] == "test"]
    figures = dict(cells for cells, _ in test["rows"])
    assert figures["top-1"] == "0.654" and figures["test photos"] == str(three_configurations[1].num_test_photos)
    assert "beta, variant tflite_int8" in html
    rows = dict(_md_table(markdown, "Test split, read once for the chosen bundle")[1:])
    assert rows["top-1"] == "0.654"
    # comparison.json keeps every configuration's figures, by configuration (a record, not the page).
    assert [e["variants"]["tflite_int8"]["top1"] for e in comparison.summary["evaluations"]] == [0.4321, 0.6543, 0.2109]


def test_the_comparison_plot_shows_validation_top1(three_configurations, tmp_path, monkeypatch):
    from mushroom.report import comparison as module

    drawn = {}
    real = module.plot_accuracy_vs_cost

    def spy(points, title, **options):
        drawn.update(points=points, title=title, **options)
        return real(points, title, **options)

    monkeypatch.setattr(module, "plot_accuracy_vs_cost", spy)
    chosen = module.choose_best(three_configurations)
    module.write_comparison_report(three_configurations, chosen, tmp_path)
    assert drawn["split"] == "validation" and drawn["chosen"] == ("beta", "int8")
    assert "validation" in drawn["title"]
    for point in drawn["points"]:
        evaluation = next(e for e in three_configurations if e.model_name == point.group)
        assert point.top1 == evaluation.variant(point.label).validation.top1
