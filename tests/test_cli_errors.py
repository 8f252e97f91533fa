"""Where a person types: a missing extra is named in one error line, no traceback."""

from __future__ import annotations

import subprocess
import sys

BLOCK_YAML = "import sys; sys.modules['yaml'] = None; from mushroom.cli import main; sys.exit(main(sys.argv[1:]))"


def test_missing_extra_is_one_line_naming_the_extra(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("name: x\n")
    result = subprocess.run([sys.executable, "-c", BLOCK_YAML, "dataset", str(config), str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: `mushroom dataset` needs the pipeline extra (yaml is not installed)")
    assert "pip install '.[pipeline]'" in lines[0]
