"""How long the evaluation report is, as a person scrolls it: report.html's height in px at
1280 px wide in headless Chromium (Debian's ``chromium``), written fresh from an evaluation.

    .venv/bin/python benchmarks/report_height.py OUTPUT/published/RUN/evaluation [--screenshot FILE]

Issue 25 asked for under a third of the 21,800 px the demo's report once had (about 7,300 px).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROBE = ("<script>window.addEventListener('load', () => {const o = document.createElement('pre'); o.id = 'probe';"
         " o.textContent = 'HEIGHT=' + document.documentElement.scrollHeight; document.body.appendChild(o);});"
         "</script></body>")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", help="a folder with evaluation.json (an evaluate stage's output)")
    parser.add_argument("--screenshot", help="also save the whole page as a PNG here")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("error: Debian's chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from mushroom.evaluation import read_evaluation
    from mushroom.report import write_report

    with tempfile.TemporaryDirectory() as tmp:
        html = Path(write_report(read_evaluation(args.evaluation), Path(tmp))["html"])
        probe = html.with_name("probe.html")
        probe.write_text(html.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
        flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run([*flags, "--window-size=1280,900", "--virtual-time-budget=5000", "--dump-dom",
                              probe.as_uri()], capture_output=True, text=True, timeout=180).stdout
        height = int(re.findall(r"HEIGHT=(\d+)", dom)[-1])
        if args.screenshot:
            subprocess.run([*flags, f"--window-size=1280,{height}", f"--screenshot={Path(args.screenshot).resolve()}",
                            probe.as_uri()], capture_output=True, timeout=180, check=True)
    print(f"report.html: {height} px high at 1280 px wide ({height / 900:.1f} screens of 900 px); "
          f"target under 7,300 px (a third of 21,800)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
