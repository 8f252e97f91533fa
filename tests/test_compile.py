"""Compile the pipeline and assert on the IR spec."""

from pathlib import Path

import pytest
import yaml

from pipelines.compile import compile_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(CONFIGS / "paper.yaml", tmp_path_factory.mktemp("c") / "paper.yaml")
    return next(yaml.safe_load_all(path.read_text()))


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    path = compile_pipeline(CONFIGS / "paper.yaml", tmp_path_factory.mktemp("p") / "paper.yaml")
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 2
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _loop(spec) -> tuple[str, dict]:
    loops = [(k, t) for k, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t]
    assert len(loops) == 1
    return loops[0]


def test_parallel_for_over_model_configs_with_parallelism(spec):
    _, loop = _loop(spec)
    iterator = loop["parameterIterator"]
    assert iterator["items"]["inputParameter"].endswith("model_configs")
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2  # cluster.parallelism in paper.yaml
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"tune-model", "train-classifier", "quantize-to-bundle", "evaluate-model"}


def test_stage_order_and_typed_artifacts(spec):
    root = spec["root"]["dag"]["tasks"]
    loop_name, _ = _loop(spec)
    assert set(root) == {"acquire-dataset", "split-dataset", loop_name, "compare-models", "publish-bundle"}
    comps = spec["components"]
    acquire = comps["comp-acquire-dataset"]["outputDefinitions"]["artifacts"]
    assert acquire["dataset"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert acquire["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    train_out = comps["comp-train-classifier"]["outputDefinitions"]["artifacts"]
    assert train_out["model"]["artifactType"]["schemaTitle"] == "system.Model"
    quant_in = comps["comp-quantize-to-bundle"]["inputDefinitions"]["artifacts"]
    assert quant_in["model"]["artifactType"]["schemaTitle"] == "system.Model"
    compare_in = comps["comp-compare-models"]["inputDefinitions"]["artifacts"]
    assert compare_in["evaluations"]["isArtifactList"] is True
    assert compare_in["bundles"]["artifactType"]["schemaTitle"] == "system.Model"
    assert comps["comp-compare-models"]["outputDefinitions"]["artifacts"]["comparison"]["artifactType"][
        "schemaTitle"] == "system.Markdown"
    ev_out = comps["comp-evaluate-model"]["outputDefinitions"]["artifacts"]
    assert {k: v["artifactType"]["schemaTitle"] for k, v in ev_out.items()} == {
        "evaluation": "system.Artifact", "calibrated_bundle": "system.Model", "metrics": "system.Metrics",
        "confusion": "system.ClassificationMetrics", "edibility_roc": "system.ClassificationMetrics",
        "report": "system.HTML", "summary": "system.Markdown"}
    assert comps["comp-compare-models"]["outputDefinitions"]["artifacts"]["report"]["artifactType"][
        "schemaTitle"] == "system.HTML"
    # compare consumes the collected evaluations of the loop
    ev = root["compare-models"]["inputs"]["artifacts"]["evaluations"]["taskOutputArtifact"]
    assert ev["producerTask"] == loop_name
    publish_in = root["publish-bundle"]["inputs"]["artifacts"]["bundle"]["taskOutputArtifact"]
    assert publish_in == {"outputArtifactKey": "best_bundle", "producerTask": "compare-models"}


def test_gpu_requests_on_tune_and_train_only(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-tune-model", "exec-train-classifier"):
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
    for name in ("exec-quantize-to-bundle", "exec-evaluate-model", "exec-acquire-dataset"):
        assert "accelerator" not in executors[name]["container"].get("resources", {})


def test_gpu_tolerations_and_node_selector_come_from_pipeline_parameters(spec, platform):
    for name in ("exec-tune-model", "exec-train-classifier"):
        (toleration,) = platform[name]["tolerations"]
        assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        selector = platform[name]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        assert selector.endswith("gpu_node_selector")
    for name in ("exec-quantize-to-bundle", "exec-evaluate-model"):
        assert "tolerations" not in platform[name]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_every_task_runs_as_non_root_with_cluster_settings(platform):
    assert len(platform) == 8
    for executor in platform.values():
        assert executor["securityContext"]["runAsNonRoot"] is True
        assert executor["securityContext"]["runAsUser"] == "10001"
        (env,) = executor["configMapAsEnv"]
        assert env["configMapName"] == "mushroom-settings" and env["optional"] is True
        assert {"configMapKey": "STORAGE_EMULATOR_HOST", "envVar": "STORAGE_EMULATOR_HOST"} in env["keyToEnv"]


def test_retries_and_caching(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["acquire-dataset"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["publish-bundle"]["retryPolicy"]["maxRetryCount"] == 2
    assert tasks["publish-bundle"]["cachingOptions"] == {}  # caching off: always publish
    assert tasks["acquire-dataset"]["cachingOptions"] == {"enableCache": True}


def test_every_image_is_the_pinned_project_image(spec):
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert len(images) == 1
    (image,) = images
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")


def test_no_runtime_pip_install(spec):
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_config_values_become_parameter_defaults(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    models = params["model_configs"]["defaultValue"]
    assert [m["architecture"] for m in models] == ["efficientnetv2-m", "resnet50"]
    assert params["dataset_config"]["defaultValue"]["source"] == "inaturalist"


def test_compile_twice_gives_identical_bytes(tmp_path):
    """Separate processes (different hash seeds), as two `make compile` runs would be."""
    import os
    import subprocess
    import sys

    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"{seed}.yaml"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "pipelines.compile", str(CONFIGS / "demo.yaml"), str(out)],
                       check=True, env=env, cwd=CONFIGS.parents[1], capture_output=True)
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_committed_compiled_pipeline_is_up_to_date(name, tmp_path):
    """`make compile` must have been run after changing the pipeline, components or configs."""
    from components.image import DEFAULT_IMAGE, IMAGE

    assert IMAGE == DEFAULT_IMAGE, "unset MUSHROOM_IMAGE to compare with the committed YAML"
    committed = CONFIGS.parent / "compiled" / f"{name}.yaml"
    fresh = compile_pipeline(CONFIGS / f"{name}.yaml", tmp_path / f"{name}.yaml")
    assert fresh.read_bytes() == committed.read_bytes(), f"{committed} is stale: run `make compile`"


def test_submit_dry_run_prints_the_submission(capsys):
    import json

    from pipelines.submit import main

    assert main([str(CONFIGS / "paper.yaml"), "--host", "http://kfp.example:8080", "--dry-run",
                 "--pipeline-root", "gs://b/root", "--no-cache"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["backend"] == "kfp" and plan["target"] == "http://kfp.example:8080"
    assert plan["enable_caching"] is False and plan["pipeline_root"] == "gs://b/root"
    assert plan["service_account"] == "mushroom-pipeline-runner"
    assert [m["model_name"] for m in plan["arguments"]["model_configs"]] == ["efficientnetv2-m", "resnet50"]


def test_submit_refuses_incomplete_targets(capsys):
    from pipelines.submit import main

    assert main([str(CONFIGS / "paper.yaml"), "--dry-run"]) == 2
    assert "--host" in capsys.readouterr().err
    assert main([str(CONFIGS / "paper.yaml"), "--vertex", "--project", "p", "--dry-run"]) == 2
    assert "--region, --pipeline-root" in capsys.readouterr().err
    assert main([str(CONFIGS / "demo.yaml"), "--host", "http://h", "--dry-run"]) == 2
    assert "needs a gs:// prefix" in capsys.readouterr().err


def test_mushroom_pipeline_runs_the_action_in_the_checkout(monkeypatch, tmp_path, capfd):
    """`mushroom pipeline ACTION ...` is `python -m pipelines.ACTION ...` run at the checkout root."""
    import json

    from mushroom.cli import main

    monkeypatch.chdir(CONFIGS.parents[1] / "pipelines")  # anywhere inside the checkout
    argv = ["pipelines/configs/paper.yaml", "--host", "http://kfp:8080", "--dry-run"]  # relative to the root
    assert main(["pipeline", "submit", *argv]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["target"] == "http://kfp:8080"
    assert f"python -m pipelines.submit {' '.join(argv)} (in {CONFIGS.parents[1]};" in err
    assert main(["pipeline", "submit", "pipelines/configs/paper.yaml", "--dry-run"]) == 2  # the action's status
    assert "--host" in capfd.readouterr().err

    monkeypatch.chdir(tmp_path)
    assert main(["pipeline", "submit", str(CONFIGS / "paper.yaml"), "--host", "http://kfp:8080"]) == 2
    err = capfd.readouterr().err
    assert "inside a quantized-mushroom checkout" in err
    assert f"python -m pipelines.submit {CONFIGS / 'paper.yaml'} --host http://kfp:8080" in err
