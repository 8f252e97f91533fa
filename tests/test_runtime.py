"""Where training runs: precision, XLA and replicas from the config and the GPUs seen."""

import keras
import numpy as np
import pytest

from mushroom.config import TrainConfig
from mushroom.models import build_model
from mushroom.runtime import Gpu, TrainingSettingError, as_float32, resolve_runtime

L4 = Gpu("NVIDIA L4", (8, 9))
P100 = Gpu("Tesla P100-PCIE-16GB", (6, 0))


def test_without_a_gpu_nothing_changes():
    runtime = resolve_runtime(TrainConfig(), seed=1, gpus=[])
    assert (runtime.precision, runtime.jit_compile, runtime.replicas) == ("float32", False, 1)
    assert runtime.global_batch(32) == 32 and runtime.learning_rate(1e-3) == 1e-3
    assert runtime.describe().startswith("CPU; precision float32, XLA off, 1 replica")


def test_on_tensor_core_gpus_auto_means_mixed_float16_xla_and_every_gpu():
    runtime = resolve_runtime(TrainConfig(), seed=1, gpus=[L4, L4])
    assert (runtime.precision, runtime.jit_compile, runtime.replicas) == ("mixed_float16", True, 2)
    assert runtime.global_batch(32) == 64 and runtime.learning_rate(1e-3) == pytest.approx(2e-3)
    one = resolve_runtime(TrainConfig(multi_gpu=False, jit_compile="off"), seed=1, gpus=[L4, L4])
    assert (one.replicas, one.jit_compile) == (1, False)


def test_an_older_gpu_trains_in_float32_unless_mixed_float16_is_forced_which_is_refused():
    assert resolve_runtime(TrainConfig(), seed=1, gpus=[P100]).precision == "float32"
    with pytest.raises(TrainingSettingError, match=r"mixed_float16 needs NVIDIA GPUs of compute capability 7\.0 "
                                                   r"or newer \(found: Tesla P100-PCIE-16GB \(6\.0\)\)"):
        resolve_runtime(TrainConfig(precision="mixed_float16"), seed=1, gpus=[P100])
    with pytest.raises(TrainingSettingError, match=r"\(found: none\)"):
        resolve_runtime(TrainConfig(precision="mixed_float16"), seed=1, gpus=[])
    assert resolve_runtime(TrainConfig(precision="mixed_bfloat16"), seed=1, gpus=[]).precision == "mixed_bfloat16"


def test_activate_sets_and_restores_the_policy():
    runtime = resolve_runtime(TrainConfig(precision="mixed_bfloat16"), seed=1, gpus=[])
    with runtime.activate():
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_a_model_trained_in_mixed_precision_is_saved_in_float32_with_the_same_weights():
    runtime = resolve_runtime(TrainConfig(precision="mixed_bfloat16"), seed=1, gpus=[])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 3, 16), 3)
    with runtime.activate():
        model = build_model("mobilenetv3-large", 3, 32, "none")
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        model.fit(x, y, epochs=1, verbose=0)
        assert model.get_layer("dropout").compute_dtype == "bfloat16"
        assert model.output.dtype == "float32"  # the softmax stays float32 under a mixed policy
        mixed_out = model.predict(x, verbose=0)
    plain = as_float32(model)
    policies = {layer.dtype_policy.name for layer in plain.layers}
    policies |= {layer.dtype_policy.name for layer in plain.get_layer("backbone").layers}
    assert policies == {"float32"}
    for a, b in zip(model.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    plain_out = plain.predict(x, verbose=0)
    assert plain_out.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: the float32 model agrees closely, not exactly.
    np.testing.assert_allclose(plain_out, mixed_out, atol=0.05)
    assert as_float32(plain) is plain
