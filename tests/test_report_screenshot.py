"""The report and the comparison page of a real evaluation, as a person sees them.

From ``trained_run``'s evaluation: the first thing in the page is the verdict card, its safety
figures are never empty, every term is in the glossary. Where Debian's ``chromium`` is installed
(``.ci/run`` installs it), both pages are rendered headless at 1280 x 900: the card fits the first
screen and no image is wider than the page. ``MUSHROOM_SCREENSHOT_DIR``: keep the screenshots there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from mushroom.evaluation import read_evaluation
from mushroom.report import write_comparison_report, write_report
from mushroom.report.verdict import GLOSSARY, verdict, wilson

CHROMIUM = shutil.which("chromium")
WIDTH, HEIGHT = 1280, 900
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

# Records, once the page has loaded, what the tests below check: the first element of <body>,
# the verdict card's box, the page's widths and every image's rendered and natural width.
PROBE = """<script>
window.addEventListener('load', () => {
  const card = document.getElementById('verdict');
  const box = card ? card.getBoundingClientRect() : null;
  const page = document.documentElement;
  const facts = {
    first: document.body.firstElementChild ? document.body.firstElementChild.id : null,
    card: box ? {top: box.top, bottom: box.bottom, width: box.width} : null,
    scrollWidth: page.scrollWidth, clientWidth: page.clientWidth, height: page.scrollHeight,
    images: [...document.images].map(i => ({width: i.getBoundingClientRect().width, natural: i.naturalWidth,
                                            complete: i.complete, maxWidth: getComputedStyle(i).maxWidth})),
  };
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify(facts);
  document.body.appendChild(out);
});
</script></body>"""


@pytest.fixture(scope="module")
def pages(trained_run, tmp_path_factory):
    """report.html and comparison.html written from trained_run's evaluation."""
    from mushroom.shipping import Choice

    evaluation = read_evaluation(trained_run["evaluation"])
    out = tmp_path_factory.mktemp("pages")
    report = write_report(evaluation, out / "report")["html"]
    choice = Choice(evaluation.model_name, evaluation.shipped_variant, "the only configuration")
    comparison = write_comparison_report([evaluation], choice, out / "comparison")
    return evaluation, report, comparison


class _Body(HTMLParser):
    """The tags under <body> in order, with their ids and classes."""

    def __init__(self) -> None:
        super().__init__()
        self.inside, self.tags = False, []

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.inside = True
        elif self.inside:
            a = dict(attrs)
            self.tags.append((tag, a.get("id"), a.get("class") or ""))


def _body_tags(path: Path) -> list[tuple[str, str | None, str]]:
    parser = _Body()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tags


def test_wilson_interval_matches_a_worked_example():
    low, high = wilson(102, 108)
    assert (round(low, 3), round(high, 3)) == (0.884, 0.974)
    assert wilson(0, 54)[0] == 0.0 and wilson(0, 0) is None


def test_both_pages_lead_with_the_verdict_card_and_end_with_the_glossary(pages):
    evaluation, report, comparison = pages
    card = verdict(evaluation)
    assert card.recorded and card.key == evaluation.shipped_key
    for fact in card.ships + card.accuracy + card.safety:
        assert fact.value.strip() and fact.value != "—", fact  # never empty
    naive = card.safety[0]
    assert naive.label.startswith("naive rule") and " of " in naive.value  # a count with its denominator
    assert any(f.label.endswith("named as a known species") for f in card.safety)
    assert "95%" in card.accuracy[0].value
    for path in (report, comparison):
        tags = _body_tags(path)
        assert tags[0][:2] == ("section", "verdict"), tags[:3]
        text = path.read_text(encoding="utf-8")
        assert text.index("SYNTHETIC") < text.index("<h1>")  # the data source shouted before anything else
        assert re.findall(r'<h2 id="(\w+)"', text)[-1] == "glossary"  # the last section
        for term, _ in GLOSSARY:
            assert f"<dt>{term}</dt>" in text.replace("&gt;", ">")
    # one confusion matrix in view (the shipped variant's), the others folded in a details block
    species = report.read_text(encoding="utf-8").split('<h2 id="species">')[1].split('<h2 id=')[0]
    in_view = re.sub(r"<details>.*?</details>", "", species, flags=re.S)
    assert in_view.count('alt="Species confusion matrix') == 1
    assert f'alt="Species confusion matrix, {evaluation.shipped_key} ' in in_view


def _probe(path: Path, tmp: Path) -> tuple[dict, Path]:
    probe = tmp / f"probe-{path.name}"
    probe.write_text(path.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    run = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size={WIDTH},{HEIGHT}"]
    dom = subprocess.run([*run, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    facts = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1).replace("&quot;", '"'))
    shot = tmp / f"{path.stem}.png"
    subprocess.run([*run, f"--screenshot={shot}", path.as_uri()], capture_output=True, timeout=180, check=True)
    keep = os.environ.get("MUSHROOM_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return facts, shot


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it); the "
                    "structure checks above still ran")
@pytest.mark.parametrize("which", ["report", "comparison"])
def test_first_screen_shows_the_verdict_card_and_no_image_is_wider_than_the_page(pages, which, tmp_path):
    _, report, comparison = pages
    facts, shot = _probe(report if which == "report" else comparison, tmp_path)
    assert facts["first"] == "verdict"
    assert facts["card"]["top"] >= 0 and facts["card"]["bottom"] <= HEIGHT, facts["card"]  # on the first screen
    assert facts["scrollWidth"] <= facts["clientWidth"], facts  # nothing scrolls sideways
    assert facts["images"], "no images"
    for image in facts["images"]:
        # never wider than its box: 100%, or a plot's own cap below that (mushroom/report/templates/report.css)
        assert image["maxWidth"] == "100%" or image["maxWidth"].startswith("min(100%"), image
        assert image["width"] <= facts["clientWidth"], image
        assert image["complete"] and image["natural"] > 0, image
    with Image.open(shot) as png:
        assert png.size == (WIDTH, HEIGHT)
        # the card's green border is on the first screen
        assert any(abs(r - 0x2E) < 12 and abs(g - 0x7D) < 12 and abs(b - 0x32) < 12
                   for _, (r, g, b) in png.convert("RGB").getcolors(maxcolors=1 << 20))
