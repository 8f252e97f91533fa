"""The HTML report is self-contained and every plot in it is a real, decodable picture."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mushroom import tflite_build
from mushroom import variants as registry
from mushroom.evaluation import read_evaluation
from mushroom.report import SECTIONS, focus_variants, write_comparison_report, write_report
from tests.helpers import copy_evaluation, synthetic_evaluation

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    """Collects images, section ids and anything that would load from outside the file."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.ids: set[str] = set()
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("link", "iframe", "object", "embed") or (tag == "script" and "src" in attrs):
            self.external.append(tag)
        for key in ("src", "href"):
            if re.match(r"^(https?:|//|file:)", attrs.get(key) or ""):
                self.external.append(attrs[key])


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_embedded_pngs(page: _Page, expected: int) -> None:
    assert len(page.images) == expected
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        data = base64.b64decode(src[len(prefix):], validate=True)
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.width >= 400 and image.height >= 300
        # Not a blank canvas: a plot has many distinct colours.
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    evaluation = synthetic_evaluation(root)
    return evaluation, write_report(evaluation, root / "evaluation")


def test_report_is_self_contained_with_every_plot_embedded(synthetic_report):
    evaluation, paths = synthetic_report
    page = parse(paths["html"])
    assert set(SECTIONS) <= page.ids
    assert page.external == []
    n = len(evaluation.variants)
    assert focus_variants(evaluation) == ["keras", "tflite_float32", "tflite_int8"]
    # A confusion matrix and a reliability diagram per variant, ROC, risk-coverage, size/latency.
    assert_embedded_pngs(page, 2 * n + 3)
    assert len(paths["plots"]) == 2 * n + 3 and all(p.is_file() for p in paths["plots"].values())


def test_report_and_summary_name_the_numbers(synthetic_report):
    evaluation, paths = synthetic_report
    text = paths["html"].read_text(encoding="utf-8")
    summary = paths["markdown"].read_text(encoding="utf-8")
    int8 = evaluation.variants["tflite_int8"]
    for document in (text, summary):
        assert f"{int8.top1:.3f}" in document
        assert f"{int8.calibrated.calibration.ece:.3f}" in document
        assert "tflite_int8" in document and "tflite_float32" in document
    for name in evaluation.species:
        assert name in text
    assert "## Safety policy" in summary and "## Float32 to int8" in summary
    assert summary.count("\n|---|") >= 5  # every table is a Markdown table


def test_comparison_report_embeds_its_plot(tmp_path):
    from mushroom.shipping import Choice

    evaluations = [synthetic_evaluation(tmp_path / f"c{i}", n_classes=6, seed=i) for i in range(2)]
    path = write_comparison_report(evaluations, Choice("synthetic-1", "int8", "a reason"), tmp_path / "out")
    page = parse(path)
    assert page.external == [] and {"comparison", "tradeoff"} <= page.ids
    assert_embedded_pngs(page, 1)
    text = path.read_text(encoding="utf-8")
    assert "synthetic-0" in text and "synthetic-1" in text


def test_trained_run_report_parses(trained_run):
    from mushroom.bundle import read_bundle

    page = parse(trained_run["evaluation"] / "report.html")
    assert set(SECTIONS) <= page.ids and page.external == []
    evaluation = read_evaluation(trained_run["evaluation"])
    assert evaluation.shipped_variant == read_bundle(trained_run["calibrated_bundle"]).shipped_variant
    # Confusion matrices and open-set histograms of the focus variants, a reliability diagram per variant,
    # three more.
    assert_embedded_pngs(page, 2 * len(focus_variants(evaluation)) + len(evaluation.variants) + 3)


def test_trained_run_report_has_an_open_set_section_and_names_its_data_source(trained_run):
    evaluation = read_evaluation(trained_run["evaluation"])
    text = (trained_run["evaluation"] / "report.html").read_text(encoding="utf-8")
    summary = (trained_run["evaluation"] / "summary.md").read_text(encoding="utf-8")
    assert evaluation.data_source["source"] == "synthetic"
    for document in (text, summary):
        assert "SYNTHETIC drawings of mushrooms" in document  # the header says so plainly
    assert summary.index("SYNTHETIC") < summary.index("## ")
    assert "## Open set: unknown species and unusable photos" in summary
    shipped = evaluation.variants["tflite_int8"].open_set or next(v.open_set for v in evaluation.variants.values())
    group = shipped.groups["non_mushroom_generated"]
    assert group.kinds == ["texture", "shapes"]  # held-out families only
    assert f"{group.auroc:.3f}" in summary and f"{group.auroc:.3f}" in text
    for kind in ("noise", "flat", "gradient", "texture", "shapes", "real_photos"):
        assert kind in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (the parse checks above still ran)")
def test_report_renders_in_headless_chromium(synthetic_report, tmp_path):
    _, paths = synthetic_report
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>document.body.setAttribute('data-images',"
              "[...document.images].map(i=>i.complete+':'+i.naturalWidth).join(',')))</script></body>")
    probe.write_text(paths["html"].read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    images = re.search(r'data-images="([^"]*)"', dom).group(1).split(",")
    assert len(images) == 9
    assert all(i.startswith("true:") and int(i.split(":")[1]) >= 400 for i in images), images
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2000", probe.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert len(Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50


# --- a variant the report has never heard of, the comparison, the building blocks -------------------------

DUMMY_VARIANT = "bfloat16_test"  # registered by the test below only


@pytest.fixture
def dummy_variant():
    variant = registry.register(registry.Variant(DUMMY_VARIANT, tflite_build.build_float32, "registered by a test"))
    try:
        yield variant.name
    finally:
        registry.unregister(DUMMY_VARIANT)


def test_a_registered_variant_is_in_every_per_variant_table_and_plot(dummy_variant, tmp_path, monkeypatch):
    from mushroom.report import plots, tables

    evaluation = synthetic_evaluation(tmp_path, n_classes=6, extra_variant=dummy_variant)
    evaluation.shipped_variant = dummy_variant  # as if its quantize stage had chosen it
    key = registry.evaluation_key(dummy_variant)
    assert list(evaluation.ordered())[-1] == key  # registered last, reported last
    drawn: dict[str, object] = {}

    def spy(name):
        real = getattr(plots, name)

        def draw(first, *args):
            drawn[name] = first
            return real(first, *args)
        return draw

    for name in ("plot_risk_coverage", "plot_edible_roc", "plot_accuracy_vs_cost"):
        monkeypatch.setattr(plots, name, spy(name))
    paths = write_report(evaluation, tmp_path / "out")
    assert key in drawn["plot_risk_coverage"] and key in drawn["plot_edible_roc"]
    assert dummy_variant in [p.label for p in drawn["plot_accuracy_vs_cost"]]
    assert {f"confusion_{key}", f"reliability_{key}"} <= set(paths["plots"])  # shipped: shown in detail
    per_variant = [*tables.section_tables(evaluation).values(), tables.species_tables(evaluation)[0]]
    for table in per_variant:
        assert key in [row[0] for row in table.rows], table.header
    summary = paths["markdown"].read_text(encoding="utf-8")
    assert f"Default variant (used by identify): {dummy_variant}." in summary
    assert f"{key} P / R / F1" in paths["html"].read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def two_evaluations(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return [synthetic_evaluation(root / f"c{i}", n_classes=6, seed=i) for i in range(2)]


def test_compare_chooses_the_shipped_variant_by_validation_top1_then_size(two_evaluations):
    from mushroom.report import compare_evaluations

    first = two_evaluations[0]
    int8 = first.variant(registry.FULL_INTEGER)
    better = copy_evaluation(first, "better", val_top1=int8.validation.top1 + 0.01)
    smaller = copy_evaluation(first, "smaller", size_mb=int8.size_mb / 2)
    assert {e.shipped_variant for e in (first, better, smaller)} == {registry.FULL_INTEGER}
    comparison = compare_evaluations([first, better, smaller])
    assert (comparison.best, comparison.choice.shipped_variant) == ("better", registry.FULL_INTEGER)
    assert compare_evaluations([first, smaller]).best == "smaller"  # the same validation top-1
    # Another configuration shipping float32 is judged by float32's figures.
    by_float = copy_evaluation(first, "by-float", registry.REFERENCE, val_top1=int8.validation.top1 + 0.05)
    by_float.shipped_variant = registry.REFERENCE
    chosen = compare_evaluations([better, by_float]).choice
    assert (chosen.model_name, chosen.shipped_variant) == ("by-float", registry.REFERENCE)


def test_compare_never_reads_the_test_split(two_evaluations):
    from mushroom.report import compare_evaluations

    first = two_evaluations[0]
    int8 = first.variant(registry.FULL_INTEGER)
    val_winner = copy_evaluation(first, "val-winner", val_top1=int8.validation.top1 + 0.02, top1=0.0, top5=0.0)
    test_winner = copy_evaluation(first, "test-winner", top1=1.0, top3=1.0, top5=1.0)
    assert compare_evaluations([test_winner, val_winner]).best == "val-winner"
    assert compare_evaluations([val_winner, test_winner]).best == "val-winner"


def test_compare_puts_the_safety_target_first(two_evaluations):
    from mushroom.report import compare_evaluations

    first = two_evaluations[0]
    int8 = first.variant(registry.FULL_INTEGER)
    unsafe = copy_evaluation(first, "unsafe", val_top1=int8.validation.top1 + 0.2)
    unsafe.variant(registry.FULL_INTEGER).calibrated.policy.val_dangerous_as_edible_rate = 0.5  # target 0.02
    comparison = compare_evaluations([unsafe, first])
    assert comparison.best == first.model_name and "1 of 2 configuration(s)" in comparison.choice.reason


def test_compare_needs_the_shipped_variant_and_validation_figures(two_evaluations):
    from mushroom.report import compare_evaluations

    first = two_evaluations[0]
    no_int8 = copy_evaluation(first, "no-int8")
    del no_int8.variants[registry.FULL_INTEGER_KEY]
    with pytest.raises(ValueError, match="no-int8 ships 'int8'"):
        compare_evaluations([first, no_int8])
    old = copy_evaluation(first, "old")
    old.variant(registry.FULL_INTEGER).validation = None
    with pytest.raises(ValueError, match="old's evaluation has no validation figures"):
        compare_evaluations([first, old])
    unrecorded = copy_evaluation(first, "unrecorded")  # evaluated before the shipped variant was recorded
    unrecorded.shipped_variant = None
    with pytest.raises(ValueError, match="unrecorded's evaluation records no shipped variant"):
        compare_evaluations([first, unrecorded])


def test_comparison_documents(two_evaluations, tmp_path):
    from mushroom.fileio import read_json
    from mushroom.report import compare_evaluations

    comparison = compare_evaluations(two_evaluations)
    assert comparison.markdown.startswith(f"# Model comparison\n\nChosen: **{comparison.best}**, variant **int8**: "
                                          "highest validation top-1")
    assert "reads the validation split only" in comparison.markdown
    assert ("\n\n| configuration | variant | size MB | latency ms (1 thread, median) | val top-1 |"
            in comparison.markdown)
    summary = comparison.summary
    assert [e["model_name"] for e in summary["evaluations"]] == ["synthetic-0", "synthetic-1"]
    assert set(summary["evaluations"][0]["variants"]) == {"keras", "tflite_float32", "tflite_int8"}
    int8 = summary["evaluations"][0]["variants"]["tflite_int8"]
    assert int8["vs_float32"]["top1_change"]["absolute"] == pytest.approx(
        two_evaluations[0].variant(registry.FULL_INTEGER).vs_float32.top1_change.absolute)
    assert [row[:2] for row in summary["table"]["rows"][:3]] == [
        ["synthetic-0", key] for key in ("keras", "tflite_float32", "tflite_int8")]
    val = two_evaluations[0].variant(registry.FULL_INTEGER).validation
    assert int8["validation"]["top1"] == pytest.approx(val.top1)
    roles = [row[-1] for row in summary["table"]["rows"]]
    assert roles.count("CHOSEN") == 1 and roles.count("shipped") == 1
    assert summary["shipped_variant"] == registry.FULL_INTEGER and summary["reason"] == comparison.choice.reason
    paths = comparison.write(tmp_path)
    assert paths["markdown"].read_text(encoding="utf-8") == comparison.markdown
    assert read_json(paths["json"])["best"] == comparison.best
    assert read_json(paths["json"])["table"] == summary["table"]
    assert {"comparison", "tradeoff"} <= parse(paths["html"]).ids
    assert paths["html"].read_text(encoding="utf-8").count('<tr class="chosen">') == 1


def test_md_table_escapes_pipes():
    from mushroom.formatting import md_table

    assert md_table(["a", "b"], [["x|y", 1]]) == "| a | b |\n|---|---|\n| x\\|y | 1 |"


def test_the_html_escapes_what_it_shows(synthetic_report):
    from mushroom.report.html import render_html

    evaluation, _ = synthetic_report
    text = render_html(evaluation.model_copy(update={"model_name": "<script>x</script>"}), {})
    assert "<script>" not in text and "Evaluation: &lt;script&gt;x&lt;/script&gt;" in text


def test_templates_are_package_data():
    import fnmatch
    import tomllib

    import mushroom

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["mushroom"]
    root = Path(mushroom.__file__).parent
    templates = [p.relative_to(root).as_posix() for p in (root / "report" / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, g) for g in patterns) for t in templates)


def test_importing_the_report_imports_no_plotting_nor_templates():
    # md_table is shared with quantize and stages: importing the package must stay cheap.
    code = ("import sys\nbefore = set(sys.modules)\nimport mushroom.report\n"
            "new = {m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)\n"
            "assert new <= {'mushroom', 'numpy'}, sorted(new)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_zero_risk_from_abstaining_is_said_so():
    from mushroom.evaluation import read_evaluation
    from mushroom.report.tables import overview_table

    evaluation = read_evaluation(Path(__file__).parent / "golden" / "evaluation.json")
    rows = {row[0]: row for row in overview_table(evaluation).rows}
    column = overview_table(evaluation).header.index("dangerous as edible")
    for key, v in evaluation.ordered().items():
        cell = rows[key][column]
        assert cell.endswith("(never says edible)") == (v.calibrated.policy.edible_threshold is None), cell
    assert any(v.calibrated.policy.edible_threshold is None for v in evaluation.variants.values())
