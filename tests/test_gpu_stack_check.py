"""scripts/check_gpu_stack.py without the network: its driver table, verdicts and inputs.

The check itself resolves the gpu extra against PyPI (`python scripts/check_gpu_stack.py`); it is
not part of the test suite.
"""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu_stack.py"


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_gpu_stack", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("driver, cuda", [("535.54.03", (12, 2)), ("535.230.02", (12, 2)), ("570.133.20", (12, 8)),
                                          ("575.51.03", (12, 9)), ("580.65.06", (13, 0))])
def test_driver_supports_the_cuda_release_of_its_branch(check, driver, cuda):
    assert check.driver_cuda(driver) == cuda


def test_verdicts(check):
    assert check.verdict((12, 5), "570.133.20")[0] is True
    full, sentence = check.verdict((12, 9), "570.133.20")
    assert not full and "minor-version compatibility only" in sentence and "575.51.03" in sentence
    assert "incompatible" in check.verdict((13, 0), "570.133.20")[1]
    with pytest.raises(ValueError, match="older than any CUDA 12"):
        check.driver_cuda("470.199.02")


def test_libraries_cuda_is_the_newest_toolkit_versioned_wheel(check):
    resolved = {"nvidia-cuda-runtime-cu12": "12.5.82", "nvidia-nvjitlink-cu12": "12.9.86",
                "nvidia-cudnn-cu12": "9.28.0.42", "tensorflow": "2.21.0"}
    assert check.libraries_cuda(resolved) == (12, 9)
    with pytest.raises(ValueError, match="no CUDA runtime"):
        check.libraries_cuda({"tensorflow": "2.21.0"})


def test_inputs_come_from_the_gpu_extra_and_the_gpu_dockerfile(check):
    requirements = check.gpu_requirements()
    assert requirements[0].startswith("tensorflow[and-cuda]")
    pinned = {r.split("==")[0] for r in requirements[1:]}
    assert set(check.TOOLKIT_VERSIONED) <= pinned  # every CUDA-versioned wheel is pinned
    assert check.image_platform() == ("3.11", (2, 36))
