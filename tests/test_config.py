from pathlib import Path

import pytest
import yaml

from mushroom.config import ConfigError, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


def _demo() -> dict:
    return yaml.safe_load((CONFIGS / "demo.yaml").read_text())


@pytest.mark.parametrize("name", ["demo.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(CONFIGS / name)
    assert config.models


def test_paper_config_matches_the_reference_study():
    config = load_config(CONFIGS / "paper.yaml")
    assert config.dataset.source == "inaturalist" and config.dataset.species == "all"
    assert config.dataset.inaturalist.place_id == 7207
    by_arch = {m.architecture: m for m in config.models}
    assert by_arch["efficientnetv2-m"].image_size == 240 and by_arch["efficientnetv2-m"].train.fine_tune_epochs > 0
    assert by_arch["resnet50"].train.fine_tune_epochs == 0
    assert all(m.weights == "imagenet" for m in config.models)


def _error_for(mutate) -> str:
    data = _demo()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    return str(info.value)


def test_unknown_architecture_names_field_and_allowed_values():
    message = _error_for(lambda d: d["models"][0].update(architecture="vgg16"))
    assert "models.0.architecture" in message
    assert "efficientnetv2-b0" in message and "mobilenetv3-large" in message


@pytest.mark.parametrize("field", ["head_epochs"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_epochs_rejected(field, value):
    message = _error_for(lambda d: d["models"][1]["train"].update({field: value}))
    assert f"models.1.train.{field}" in message and "greater than or equal to 1" in message


def test_non_positive_tune_epochs_rejected():
    message = _error_for(lambda d: d["models"][0]["tune"].update(epochs=0))
    assert "models.0.tune.epochs" in message


def test_missing_folder_rejected(tmp_path):
    missing = tmp_path / "nope"
    message = _error_for(lambda d: d["dataset"].update(source="folder", folder={"root": str(missing)}))
    assert "dataset.folder.root" in message and "does not exist" in message


def test_folder_source_needs_a_folder():
    message = _error_for(lambda d: d["dataset"].update(source="folder"))
    assert "folder.root" in message


def test_unknown_species_rejected():
    message = _error_for(lambda d: d["dataset"]["species"].append("Amanita imaginaria"))
    assert "dataset.species" in message and "Amanita imaginaria" in message


def test_unknown_field_and_bad_split_rejected():
    assert "models.0.epochz: unknown field" in _error_for(lambda d: d["models"][0].update(epochz=3))
    assert "must be 1" in _error_for(lambda d: d.update(split={"train": 0.5, "val": 0.2, "test": 0.2}))


def test_duplicate_model_names_and_bad_weights_rejected():
    assert "repeated" in _error_for(lambda d: d["models"][1].update(model_name=d["models"][0]["model_name"]))
    assert "models.0.weights" in _error_for(lambda d: d["models"][0].update(weights="/no/such/file.h5"))


def test_missing_config_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_run_entry_point_fails_fast_on_bad_config(tmp_path, capsys):
    from pipelines.run import main

    data = _demo()
    data["models"][0]["architecture"] = "alexnet"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main([str(path), "--output", str(tmp_path / "out")]) == 2
    assert "models.0.architecture" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
