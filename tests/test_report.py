"""The HTML report is self-contained and every plot in it is a real, decodable picture."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mushroom.fileio import read_json
from mushroom.report import SECTIONS, focus_variants, write_comparison_report, write_report
from mushroom.species import load_catalog

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


def synthetic_evaluation(tmp_path: Path, n_classes: int = 12, seed: int = 0) -> dict:
    """An evaluation of made-up predictions (no TensorFlow) over real catalog species."""
    from mushroom.bundle import read_bundle, write_bundle
    from mushroom.evaluate import evaluate_predictions

    rng = np.random.default_rng(seed)
    catalog = load_catalog()
    catalog = catalog.subset([s.scientific_name for s in catalog][:n_classes])
    write_bundle(tmp_path / "bundle", {"float32": b"f" * 40_000, "int8": b"q" * 11_000}, catalog,
                 {"model_name": f"synthetic-{seed}", "architecture": "none", "image_size": 64})
    bundle = read_bundle(tmp_path / "bundle")

    def probs(labels, strength):
        logits = rng.normal(size=(len(labels), n_classes))
        logits[np.arange(len(labels)), labels] += strength
        e = np.exp(logits * 2.5)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    val_labels, test_labels = rng.integers(0, n_classes, 400), rng.integers(0, n_classes, 300)
    strengths = {"keras": 2.2, "tflite_float32": 2.2, "tflite_int8": 2.0}
    latency = {v: {"threads_1": {"median_ms": m, "p90_ms": 1.3 * m, "mean_ms": m, "min_ms": m},
                   "threads_all": {"median_ms": m / 2, "p90_ms": m, "mean_ms": m / 2, "min_ms": m / 2}}
               for v, m in (("tflite_float32", 9.0 + seed), ("tflite_int8", 4.0 + seed))}
    return evaluate_predictions(test_labels, {v: probs(test_labels, s) for v, s in strengths.items()}, bundle,
                                val_labels, {v: probs(val_labels, s) for v, s in strengths.items()}, latency,
                                target=0.02)


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
    n = len(evaluation["variants"])
    assert focus_variants(evaluation) == ["keras", "tflite_float32", "tflite_int8"]
    # A confusion matrix and a reliability diagram per variant, ROC, risk-coverage, size/latency.
    assert_embedded_pngs(page, 2 * n + 3)
    assert len(paths["plots"]) == 2 * n + 3 and all(p.is_file() for p in paths["plots"].values())


def test_report_and_summary_name_the_numbers(synthetic_report):
    evaluation, paths = synthetic_report
    text = paths["html"].read_text(encoding="utf-8")
    summary = paths["markdown"].read_text(encoding="utf-8")
    int8 = evaluation["variants"]["tflite_int8"]
    for document in (text, summary):
        assert f"{int8['top1']:.3f}" in document
        assert f"{int8['calibrated']['calibration']['ece']:.3f}" in document
        assert "tflite_int8" in document and "tflite_float32" in document
    for name in evaluation["species"]:
        assert name in text
    assert "## Safety policy" in summary and "## Float32 to int8" in summary
    assert summary.count("\n|---|") >= 5  # every table is a Markdown table


def test_comparison_report_embeds_its_plot(tmp_path):
    evaluations = [synthetic_evaluation(tmp_path / f"c{i}", n_classes=6, seed=i) for i in range(2)]
    path = write_comparison_report(evaluations, "synthetic-1", tmp_path / "out")
    page = parse(path)
    assert page.external == [] and {"comparison", "tradeoff"} <= page.ids
    assert_embedded_pngs(page, 1)
    text = path.read_text(encoding="utf-8")
    assert "synthetic-0" in text and "synthetic-1" in text


def test_trained_run_report_parses(trained_run):
    page = parse(trained_run["evaluation"] / "report.html")
    assert set(SECTIONS) <= page.ids and page.external == []
    evaluation = read_json(trained_run["evaluation"] / "evaluation.json")
    # Confusion matrices of the focus variants, a reliability diagram per variant, three more.
    assert_embedded_pngs(page, len(focus_variants(evaluation)) + len(evaluation["variants"]) + 3)


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
