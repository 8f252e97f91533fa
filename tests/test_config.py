from pathlib import Path

import pytest
import yaml

from mushroom.cluster import DEFAULT_STAGES
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


# --------------------------------------------------------------------------- cluster: scheduling


def test_cluster_defaults_fit_the_demo_node_and_paper_stays_gpu_sized():
    from mushroom.cluster import cpu_millis, memory_bytes, peak_requests

    demo = load_config(CONFIGS / "demo.yaml").cluster
    assert demo.fit == "run" and demo.node.cpu == "4" and demo.node.memory == "7680Mi"
    peak = peak_requests(demo)
    assert peak["cpu"] + cpu_millis(demo.node.reserved_cpu) <= 4000
    assert peak["memory"] + memory_bytes(demo.node.reserved_memory) <= 7680 * 2**20
    assert all(demo.stages.of(s).accelerator_count == 0 for s in ("tune", "train"))
    paper = load_config(CONFIGS / "paper.yaml").cluster
    for stage in ("tune", "train"):
        assert paper.stages.of(stage).accelerator_count == 1 and paper.stages.of(stage).memory_request == "16Gi"
    assert paper.stages.evaluate.accelerator_count == 0 and paper.fit == "stage"


def test_a_stage_given_in_part_keeps_its_other_defaults():
    from mushroom.cluster import DEFAULT_STAGES

    data = _demo()
    data["cluster"]["stages"] = {"train": {"timeout_s": 600}, "publish": {"retries": 1}}
    cluster = parse_config(data).cluster
    assert cluster.stages.train.timeout_s == 600
    assert cluster.stages.train.memory_request == DEFAULT_STAGES["train"]["memory_request"]
    assert cluster.stages.publish.retries == 1 and cluster.stages.publish.caching is False
    assert cluster.stages.acquire.retries == 2 and cluster.stages.tune.retries == 0


def test_request_above_its_limit_names_the_stage_and_field():
    message = _error_for(lambda d: d["cluster"].update(stages={"evaluate": {"memory_request": "3Gi",
                                                                            "memory_limit": "2Gi"}}))
    assert "cluster.stages.evaluate: memory_request 3Gi is above memory_limit 2Gi" in message
    assert len(message.splitlines()) == 2  # one error, not a cascade


@pytest.mark.parametrize("field, value, expected", [
    ("memory_request", "2GB", "cluster.stages.tune.memory_request: '2GB' is not a memory quantity"),
    ("memory_request", "1.5Gi", "cluster.stages.tune.memory_request: '1.5Gi' is not a memory quantity"),
    ("cpu_limit", "two", "cluster.stages.tune.cpu_limit: 'two' is not a CPU quantity"),
    ("retries", 5, "cluster.stages.tune.retries: Input should be less than or equal to 3"),
    ("timeout_s", 10, "cluster.stages.tune.timeout_s: Input should be greater than or equal to 60"),
])
def test_bad_stage_values_name_the_field(field, value, expected):
    assert expected in _error_for(lambda d: d["cluster"].update(stages={"tune": {field: value}}))


def test_numbers_in_yaml_are_quantities():
    data = _demo()
    data["cluster"]["stages"] = {"tune": {"cpu_request": 1, "cpu_limit": 1.5}}
    tune = parse_config(data).cluster.stages.tune
    assert (tune.cpu_request, tune.cpu_limit) == ("1", "1.5")


def test_unknown_accelerator_names_the_field_and_the_allowed():
    message = _error_for(lambda d: d["cluster"].update(accelerator_type="NVIDIA_L4"))
    assert ("cluster.accelerator_type: unknown accelerator 'NVIDIA_L4' (a Vertex AI accelerator: set it as "
            "cluster.vertex.accelerator_type); allowed: ['nvidia.com/gpu']") in message


@pytest.mark.parametrize("mutate, expected", [
    (lambda c: c.update(stages={"train": {"memory_request": "6Gi", "memory_limit": "8Gi"}}),
     "stages.train.memory_request 6Gi is more than node.memory 7680Mi - node.reserved_memory 2560Mi = 5120Mi"),
    (lambda c: c.update(stages={"train": {"cpu_request": "3", "cpu_limit": "3"}}),
     "stages.train.cpu_request 3 is more than node.cpu 4 - node.reserved_cpu 1800m = 2200m"),
    (lambda c: c.update(stages={"tune": {"accelerator_count": 1}}),
     "stages.tune.accelerator_count 1 is more than node.accelerators 0"),
    (lambda c: c["node"].update(ephemeral_storage="2Gi"),
     "stages.tune.scratch_size 4Gi is more than node.ephemeral_storage 2Gi"),
    (lambda c: c.update(parallelism=3, trial_parallelism=1),
     "with fit: run, the run's peak cpu (3000m: parallelism 3"),
    (lambda c: c.update(parallelism=1, trial_parallelism=3),  # three tune trial tasks of 1 CPU / 2304Mi
     "with fit: run, the run's peak cpu (3000m: parallelism 1 x the largest loop stage (tune: trial_parallelism 3 "
     "x its requests), or the largest other stage) is more than node.cpu 4 - node.reserved_cpu 1800m = 2200m"),
    (lambda c: c.update(parallelism=2, trial_parallelism=1),  # the requests fit, but with no memory headroom
     "with fit: run, the run's peak memory (5120Mi: parallelism 2 x the largest loop stage, or the largest other "
     "stage) is more than 4608Mi, what node.memory_headroom 0.1 leaves of node.memory 7680Mi - "
     "node.reserved_memory 2560Mi = 5120Mi"),
])
def test_a_config_that_cannot_fit_its_node_is_refused(mutate, expected):
    message = _error_for(lambda d: mutate(d["cluster"]))
    assert "cluster: does not fit its node: " in message and expected in message


def test_fit_stage_checks_each_stage_alone_and_the_tasks_in_flight_against_the_pool():
    data = _demo()
    data["cluster"].update(parallelism=4, fit="stage")
    data["cluster"]["node"]["count"] = 4  # a pool of 4 demo nodes, each holding 2 tasks of any loop stage
    assert parse_config(data).cluster.parallelism == 4  # 4 x 2560Mi would not fit one node; the pool does
    data["cluster"]["node"]["count"] = 3
    message = _error_for(lambda d: d.update(cluster=data["cluster"]))
    assert ("trial_parallelism 2 x parallelism 4 = 8 tune trials at once, but node.count 3 node(s) hold 6 "
            "(2 a node by stages.tune's requests)") in message
    assert "parallelism 4: 4 quantize tasks" not in message  # 4 fit on 3 nodes of 2


def test_images_are_pinned_and_the_gpu_image_is_derived():
    from mushroom.cluster import parse_images

    images = parse_images({}, "reg.example:5000/m:0.2.0")
    assert (images.cpu, images.gpu) == ("reg.example:5000/m:0.2.0", "reg.example:5000/m:0.2.0-gpu")
    assert parse_images({"MUSHROOM_IMAGE": "r/m:1"}, "d:1").gpu == "r/m:1-gpu"
    for env, expected in [
        ({"MUSHROOM_IMAGE": "r/m:latest"}, "MUSHROOM_IMAGE: 'r/m:latest' must be pinned"),
        ({"MUSHROOM_IMAGE": "r/m"}, "MUSHROOM_IMAGE: 'r/m' must be pinned"),
        ({"MUSHROOM_IMAGE": "r/m@sha256:abc"}, "MUSHROOM_IMAGE: 'r/m@sha256:abc': a digest is 'sha256:'"),
        ({"MUSHROOM_GPU_IMAGE": "r/g:latest"}, "MUSHROOM_GPU_IMAGE: 'r/g:latest' must be pinned"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_images(env, "d:1")
        assert expected in str(info.value) and len(str(info.value).splitlines()) == 2


def test_a_quantize_recipe_adds_int8_recipe_and_bad_recipes_are_named():
    from mushroom.config import ConfigError, parse_model_config

    base = {"model_name": "m", "architecture": "mobilenetv3-large", "weights": "none"}
    assert "int8_recipe" not in parse_model_config(base).quantize.variants
    recipe = [{"tensors": "@logits", "method": "percentile", "percentile": 99.9, "photos": "held_out_like"}]
    q = parse_model_config({**base, "quantize": {"recipe": recipe}}).quantize
    assert q.variants[-1] == "int8_recipe" and q.recipe[0].percentile == 99.9
    listed = parse_model_config({**base, "quantize": {"recipe": recipe, "variants": ["float32", "int8"]}}).quantize
    assert listed.variants == ["float32", "int8", "int8_recipe"]
    for bad, message in (({"variants": ["float32", "int8", "int8_recipe"]}, "int8_recipe but quantize.recipe is empty"),
                         ({"recipe": [{"tensors": "block(1"}]}, "not a regular expression"),
                         ({"recipe": [{"tensors": "@head"}]}, "@logits and @features"),
                         ({"recipe": [{"tensors": "@logits", "method": "entropy"}]}, "method"),
                         ({"recipe": [{"tensors": "@logits", "percentile": 100}]}, "percentile")):
        with pytest.raises(ConfigError, match=message):
            parse_model_config({**base, "quantize": bad})


def test_docs_stage_table_lists_every_stage_with_its_defaults():
    """docs/configuration.md's "Stage defaults" table is what DEFAULT_STAGES says, one row per stage, in order."""
    readme = (CONFIGS.parents[1] / "docs" / "configuration.md").read_text(encoding="utf-8")
    head = "| stage | CPU request / limit | memory request / limit | scratch | timeout | retries | caching |"
    rows = readme.split(head, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    table = {}
    for row in rows:
        stage, cpu, memory, scratch, timeout, retries, caching = (c.strip() for c in row.strip("|").split("|"))
        table[stage] = (cpu, memory, scratch, timeout, int(retries), caching.startswith("on"))
    expected = {
        stage: (f"{d['cpu_request']} / {d['cpu_limit']}", f"{d['memory_request']} / {d['memory_limit']}",
                d["scratch_size"], f"{d['timeout_s'] // 3600} h", d.get("retries", 0), d.get("caching", True))
        for stage, d in DEFAULT_STAGES.items()
    }
    assert list(table) == list(expected)
    assert table == expected
