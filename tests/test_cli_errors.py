"""Where a person types: a missing extra is named in one error line, no traceback."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest

from mushroom import cli

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


def test_pipeline_without_the_pipeline_extra_is_one_line_not_the_childs_traceback():
    block = BLOCK_YAML.replace("sys.modules['yaml'] = None", "import importlib.util as u; "
                               "f = u.find_spec; u.find_spec = lambda n, *a: None if n == 'yaml' else f(n, *a)")
    # `compile` without its arguments: were the extra not checked first, the child would print
    # its own usage lines (and exit 2), so the one-line assertion below tells the two apart fast.
    result = subprocess.run([sys.executable, "-c", block, "pipeline", "compile"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: `mushroom pipeline` needs the pipeline extra (yaml is not installed)")


def test_an_unforeseen_error_is_one_line_and_the_traceback_comes_on_request(monkeypatch):
    def boom(args):
        raise RuntimeError("the disk caught fire")

    monkeypatch.setattr(cli, "_cmd_species", boom)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(["species"]) == 1
    assert err.getvalue() == ("error: RuntimeError: the disk caught fire "
                              f"(set {cli.TRACEBACK_ENV}=1 for the traceback)\n")
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(RuntimeError, match="caught fire"):
        cli.main(["species"])
