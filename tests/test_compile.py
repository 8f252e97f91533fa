"""Compile the pipeline and assert on the IR spec."""

import json
from pathlib import Path

import pytest
import yaml

from mushroom.stage_names import STAGES
from pipelines.compile import compile_pipeline

CONFIGS = Path(__file__).resolve().parents[1] / "pipelines" / "configs"


@pytest.fixture(scope="module", autouse=True)
def _default_images():
    """Every test here sees the default images, as the committed YAML names them: MUSHROOM_IMAGE
    and MUSHROOM_GPU_IMAGE of the environment (``make compile``/``make submit`` set them) are unset
    for the module; the tests about them set their own."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MUSHROOM_IMAGE", raising=False)
        env.delenv("MUSHROOM_GPU_IMAGE", raising=False)
        yield


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
    assert set(body) == {"plan-trials", "for-loop-2", "select-trials", "for-loop-3", "select-trials-2",
                         "train-classifier", "quantize-to-bundle", "evaluate-model"}


def test_tune_is_rounds_of_trial_tasks_in_nested_loops(spec):
    """paper.yaml: tune.rounds 2 and cluster.trial_parallelism 4: plan -> loop of up to 4 trial
    tasks -> select -> loop over the survivors -> select, whose hyperparameters train reads."""
    _, loop = _loop(spec)
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    for nested, plan_or_select, trial in (("for-loop-2", "plan-trials", "train-trials"),
                                          ("for-loop-3", "select-trials", "train-trials-2")):
        assert body[nested]["iteratorPolicy"]["parallelismLimit"] == 4
        assert body[nested]["taskInfo"]["name"].endswith("-trials")
        items = body[nested]["parameterIterator"]["items"]["inputParameter"]
        assert items == f"pipelinechannel--{plan_or_select}-Output"  # the trials the task before returned
        assert body[nested]["dependentTasks"] == [plan_or_select]
        inner = spec["components"][body[nested]["componentRef"]["name"]]["dag"]["tasks"]
        assert set(inner) == {trial} and inner[trial]["taskInfo"]["name"] == "tune-trials"
        assert body[plan_or_select]["inputs"]["parameters"]["tasks"]["runtimeValue"]["constant"] == 4
    collected = body["select-trials-2"]["inputs"]["artifacts"]
    assert collected["results"]["taskOutputArtifact"] == {
        "outputArtifactKey": "pipelinechannel--train-trials-2-results", "producerTask": "for-loop-3"}
    assert collected["previous"]["taskOutputArtifact"] == {"outputArtifactKey": "hyperparameters",
                                                            "producerTask": "select-trials"}
    assert body["train-classifier"]["inputs"]["artifacts"]["hyperparameters"]["taskOutputArtifact"] == {
        "outputArtifactKey": "hyperparameters", "producerTask": "select-trials-2"}


def test_stage_order_and_typed_artifacts(spec):
    root = spec["root"]["dag"]["tasks"]
    loop_name, _ = _loop(spec)
    assert set(root) == {"acquire-dataset", "split-dataset", "prepare-shards", loop_name, "compare-models",
                         "publish-bundle"}
    comps = spec["components"]
    # prepare decodes once for the whole loop: tune, train, quantize and evaluate read its shards,
    # streamed from the location prepare returns (paper.yaml: cluster.shards stream), no artifact download
    assert root["prepare-shards"]["inputs"]["parameters"]["model_configs"] == {
        "componentInputParameter": "model_configs"}
    loop_tasks = spec["components"][root[loop_name]["componentRef"]["name"]]["dag"]["tasks"]
    trial_tasks = spec["components"][loop_tasks["for-loop-2"]["componentRef"]["name"]]["dag"]["tasks"]
    for task in (trial_tasks["train-trials"], *(loop_tasks[t] for t in ("train-classifier", "quantize-to-bundle",
                                                                        "evaluate-model"))):
        assert task["inputs"]["parameters"]["shards_uri"] == {
            "componentInputParameter": "pipelinechannel--prepare-shards-Output"}, task["taskInfo"]
        assert "shards" not in task["inputs"]["artifacts"]
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
        "report": "system.HTML", "summary": "system.Markdown", "wandb": "system.Artifact"}
    assert comps["comp-compare-models"]["outputDefinitions"]["artifacts"]["report"]["artifactType"][
        "schemaTitle"] == "system.HTML"
    # compare consumes the collected evaluations of the loop
    ev = root["compare-models"]["inputs"]["artifacts"]["evaluations"]["taskOutputArtifact"]
    assert ev["producerTask"] == loop_name
    publish_in = root["publish-bundle"]["inputs"]["artifacts"]["bundle"]["taskOutputArtifact"]
    assert publish_in == {"outputArtifactKey": "best_bundle", "producerTask": "compare-models"}


def test_gpu_requests_on_tune_and_train_only(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-train-trials", "exec-train-trials-2", "exec-train-classifier"):
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
    for name in ("exec-quantize-to-bundle", "exec-evaluate-model", "exec-acquire-dataset", "exec-plan-trials",
                 "exec-select-trials", "exec-select-trials-2"):
        assert "accelerator" not in executors[name]["container"].get("resources", {})


def test_gpu_tolerations_and_node_selector_come_from_pipeline_parameters(spec, platform):
    for name in ("exec-train-trials", "exec-train-trials-2", "exec-train-classifier"):
        (toleration,) = platform[name]["tolerations"]
        assert toleration["tolerationJson"]["componentInputParameter"].endswith("gpu_tolerations")
        selector = platform[name]["nodeSelector"]["nodeSelectorJson"]["componentInputParameter"]
        assert selector.endswith("gpu_node_selector")
    for name in ("exec-quantize-to-bundle", "exec-evaluate-model", "exec-plan-trials", "exec-select-trials"):
        assert "tolerations" not in platform[name]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_tolerations"]["defaultValue"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_every_task_runs_as_non_root_with_cluster_settings(spec, platform):
    assert set(platform) == set(spec["deploymentSpec"]["executors"]) and len(platform) > len(STAGES)
    for executor in platform.values():
        assert executor["securityContext"]["runAsNonRoot"] is True
        assert executor["securityContext"]["runAsUser"] == "10001"
        (env,) = executor["configMapAsEnv"]
        assert env["configMapName"] == "mushroom-settings" and env["optional"] is True
        assert {"configMapKey": "STORAGE_EMULATOR_HOST", "envVar": "STORAGE_EMULATOR_HOST"} in env["keyToEnv"]
        (secret,) = executor["secretAsEnv"]  # the W&B key where the cluster has one
        assert secret["secretName"] == "wandb" and secret["optional"] is True
        assert secret["keyToEnv"] == [{"secretKey": "api_key", "envVar": "WANDB_API_KEY"}]


def test_retries_with_backoff_and_caching(spec):
    tasks = spec["root"]["dag"]["tasks"]
    backoff = {"backoffDuration": "60s", "backoffFactor": 2.0, "backoffMaxDuration": "3600s"}
    assert tasks["acquire-dataset"]["retryPolicy"] == {"maxRetryCount": 2, **backoff}
    assert tasks["publish-bundle"]["retryPolicy"] == {"maxRetryCount": 2, **backoff}
    assert "retryPolicy" not in tasks["split-dataset"] and "retryPolicy" not in tasks["compare-models"]
    _, loop = _loop(spec)
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert all("retryPolicy" not in task for task in body.values())  # a retry cannot tell preemption from a bug
    assert tasks["publish-bundle"]["cachingOptions"] == {}  # caching off: always publish
    assert tasks["acquire-dataset"]["cachingOptions"] == {"enableCache": True}


def test_timeouts_and_scratch_are_kubernetes_platform_config(platform):
    timeouts = {name: int(e["activeDeadlineSeconds"]) for name, e in platform.items()}
    assert timeouts["exec-train-classifier"] == 24 * 3600 and timeouts["exec-split-dataset"] == 3600
    for executor in platform.values():
        (scratch,) = executor["emptyDirMounts"]
        assert scratch["mountPath"] == "/tmp" and scratch["sizeLimit"]
    assert platform["exec-train-trials"]["emptyDirMounts"][0]["sizeLimit"] == "20Gi"  # paper.yaml: stages.tune


# --------------------------------------------------------------------------- the committed YAML

# Which image every executor of the committed YAML runs: GPU stages the GPU image, the others
# the CPU image (`make compile` with the Makefile's IMAGE and TAG).
CPU_IMAGE = "ghcr.io/quantized-mushroom/mushroom:0.1.0"
GPU_IMAGE = "ghcr.io/quantized-mushroom/mushroom:0.1.0-gpu"
EXECUTORS = ["exec-acquire-dataset", "exec-split-dataset", "exec-prepare-shards", "exec-plan-trials",
             "exec-train-trials", "exec-select-trials", "exec-train-classifier",
             "exec-quantize-to-bundle", "exec-evaluate-model", "exec-compare-models", "exec-publish-bundle"]
SECOND_ROUND = ["exec-train-trials-2", "exec-select-trials-2"]  # tune.rounds 2 in both
PAPER_GPU = ("exec-train-trials", "exec-train-trials-2", "exec-train-classifier")
EXPECTED_IMAGES = {
    "paper": {e: GPU_IMAGE if e in PAPER_GPU else CPU_IMAGE for e in EXECUTORS + SECOND_ROUND},
    "demo": dict.fromkeys(EXECUTORS + SECOND_ROUND, CPU_IMAGE),  # accelerator_count 0 everywhere: CPU TensorFlow
}


def _committed(name: str) -> list[dict]:
    return list(yaml.safe_load_all((CONFIGS.parent / "compiled" / f"{name}.yaml").read_text()))


@pytest.mark.parametrize("name", ["paper", "demo"])
def test_committed_yaml_runs_each_stage_in_the_image_of_its_role(name):
    executors = _committed(name)[0]["deploymentSpec"]["executors"]
    assert {e: executors[e]["container"]["image"] for e in executors} == EXPECTED_IMAGES[name]
    for executor in executors.values():
        has_gpu = "accelerator" in executor["container"].get("resources", {})
        assert executor["container"]["image"] == (GPU_IMAGE if has_gpu else CPU_IMAGE)


@pytest.mark.parametrize("name", ["paper", "demo", "paper.vertex", "demo.vertex"])
def test_committed_yaml_tells_gpu_stages_how_many_gpus_they_asked_for(name):
    """The stage checks MUSHROOM_ACCELERATORS against the GPUs TensorFlow sees before any work
    (mushroom.runtime.check_accelerators); CPU stages carry neither variable. Every stage is told
    the image it runs in (MUSHROOM_IMAGE_REF, recorded in its outputs; tags here, so no digest)."""
    for executor in _committed(name)[0]["deploymentSpec"]["executors"].values():
        container = executor["container"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        assert env.pop("MUSHROOM_IMAGE_REF") == container["image"] and "MUSHROOM_IMAGE_DIGEST" not in env
        accelerator = container.get("resources", {}).get("accelerator")
        if accelerator:
            assert env == {"MUSHROOM_ACCELERATORS": accelerator["resourceCount"],
                           "MUSHROOM_ACCELERATOR": "required"}
        else:
            assert env == {}


def _quantity(text: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


# The demo's target: one 4-CPU / 8 GB node (about 7.5 GiB allocatable) that also runs
# Kubernetes, standalone Kubeflow Pipelines and the GCS emulator, whose pods request about
# 1.8 CPU / 2.5 GiB (docs/clusters.md, "Why the demo fits a 4-CPU / 8 GB node", lists the figures and their sources).
DEMO_NODE = {"cpu": 4.0, "memory": 7.5 * 2**30}
OTHER_PODS = {"cpu": 1.8, "memory": 2.5 * 2**30}


def test_committed_demo_yaml_fits_one_4_cpu_8_gb_node_with_kubeflow_pipelines():
    spec = _committed("demo")[0]
    executors = spec["deploymentSpec"]["executors"]
    requests = {name: {"cpu": _quantity(e["container"]["resources"]["resourceCpuRequest"]),
                       "memory": _quantity(e["container"]["resources"]["resourceMemoryRequest"])}
                for name, e in executors.items()}
    _, loop = _loop(spec)
    width = loop["iteratorPolicy"]["parallelismLimit"]
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    loop_executors = {}  # executor -> how many of it one configuration runs at once (trial tasks: a nested loop)
    for task in body.values():
        component = spec["components"][task["componentRef"]["name"]]
        if "dag" in component:
            for inner in component["dag"]["tasks"].values():
                executor = spec["components"][inner["componentRef"]["name"]]["executorLabel"]
                loop_executors[executor] = task["iteratorPolicy"]["parallelismLimit"]
        else:
            loop_executors[component["executorLabel"]] = 1
    assert loop_executors["exec-train-trials"] == 2  # demo.yaml: cluster.trial_parallelism
    peak = {}
    for resource in ("cpu", "memory"):
        # Each model configuration runs its loop stages one after the other, `width` at a time.
        in_loop = width * max(n * requests[e][resource] for e, n in loop_executors.items())
        alone = max(r[resource] for e, r in requests.items() if e not in loop_executors)
        peak[resource] = max(in_loop, alone)
        assert peak[resource] + OTHER_PODS[resource] <= DEMO_NODE[resource], resource
    # At least 10% of the memory the other pods leave stays unrequested (cluster.node.memory_headroom).
    assert peak["memory"] <= 0.9 * (DEMO_NODE["memory"] - OTHER_PODS["memory"])
    assert width == 1


def test_committed_demo_yaml_downloads_the_shards_from_its_minio_root():
    """demo.yaml (kind, minikube: a minio:// pipeline root, which the stages cannot stream) gives
    the later tasks the shards artifact (cluster.shards: download)."""
    spec = _committed("demo")[0]
    _, loop = _loop(spec)
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    for task in ("train-classifier", "quantize-to-bundle", "evaluate-model"):
        assert body[task]["inputs"]["artifacts"]["shards"] == {
            "componentInputArtifact": "pipelinechannel--prepare-shards-shards"}
        assert "shards_uri" not in body[task]["inputs"].get("parameters", {})


def test_committed_paper_yaml_stays_gpu_sized():
    executors = _committed("paper")[0]["deploymentSpec"]["executors"]
    for name in PAPER_GPU:
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["resourceMemoryRequest"] == "16Gi" and resources["resourceCpuRequest"] == "4"


def test_loop_body_is_the_config_loop_stages(spec):
    from mushroom.stage_names import LOOP_STAGES
    from pipelines.pipeline import TUNE_TASKS

    _, loop = _loop(spec)
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    names = [t["taskInfo"]["name"] for t in body.values()]
    for task in body.values():  # the rounds of trial tasks
        component = spec["components"][task["componentRef"]["name"]]
        names += [t["taskInfo"]["name"] for t in component.get("dag", {}).get("tasks", {}).values()]
    tasks = {name for name in names if not name.startswith("round-")}
    assert tasks == set(LOOP_STAGES) - {"tune"} | set(TUNE_TASKS)
    assert {name.split("-")[0] for name in tasks} == set(LOOP_STAGES)


def test_no_runtime_pip_install(spec):
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_config_values_become_parameter_defaults(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    models = params["model_configs"]["defaultValue"]
    assert [m["architecture"] for m in models] == ["efficientnetv2-m", "resnet50", "efficientnet-lite0",
                                                   "efficientnet-lite2"]
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
    assert [m["model_name"] for m in plan["arguments"]["model_configs"]] == [
        "efficientnetv2-m", "resnet50", "efficientnet-lite0", "efficientnet-lite2"]


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


# --------------------------------------------------------------------------- bad input, before any work


def _write_config(tmp_path, mutate) -> Path:
    data = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    mutate(data)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("image", ["ghcr.io/quantized-mushroom/mushroom:latest", "ghcr.io/quantized-mushroom/mushroom",
                                   "localhost:5000/mushroom"])
def test_unpinned_image_stops_compile_and_submit_naming_the_variable(image, monkeypatch, tmp_path, capsys):
    from pipelines.compile import main as compile_main
    from pipelines.submit import main as submit_main

    monkeypatch.setenv("MUSHROOM_IMAGE", image)
    assert compile_main([str(CONFIGS / "demo.yaml"), str(tmp_path / "out.yaml")]) == 2
    assert not (tmp_path / "out.yaml").exists()
    err = capsys.readouterr().err
    assert f"MUSHROOM_IMAGE: {image!r} must be pinned" in err and len(err.strip().splitlines()) == 2
    assert submit_main([str(CONFIGS / "paper.yaml"), "--host", "http://h", "--dry-run"]) == 2
    assert "MUSHROOM_IMAGE" in capsys.readouterr().err


def test_gpu_image_follows_the_cpu_tag_or_its_own_pin(monkeypatch, capsys):
    from pipelines.submit import main

    digest = "sha256:" + "a" * 64
    monkeypatch.setenv("MUSHROOM_IMAGE", "reg.example/m:1.2.0")
    assert main([str(CONFIGS / "paper.yaml"), "--host", "http://h", "--dry-run"]) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    assert images["train"] == "reg.example/m:1.2.0-gpu" and images["evaluate"] == "reg.example/m:1.2.0"
    monkeypatch.setenv("MUSHROOM_IMAGE", f"reg.example/m@{digest}")
    assert main([str(CONFIGS / "paper.yaml"), "--host", "http://h", "--dry-run"]) == 2
    assert "MUSHROOM_GPU_IMAGE is required when MUSHROOM_IMAGE is pinned by digest" in capsys.readouterr().err
    monkeypatch.setenv("MUSHROOM_GPU_IMAGE", f"reg.example/m-gpu@{digest}")
    assert main([str(CONFIGS / "paper.yaml"), "--host", "http://h", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["images"]["tune"] == f"reg.example/m-gpu@{digest}"


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["cluster"].update(stages={"train": {"cpu_request": "4", "cpu_limit": "2"}}),
     "cluster.stages.train: cpu_request 4 is above cpu_limit 2"),
    (lambda d: d["cluster"].update(accelerator_type="nvidia.com/gpus"),
     "cluster.accelerator_type: unknown accelerator 'nvidia.com/gpus'"),
    (lambda d: d["cluster"].update(stages={"tune": {"memory_request": "16Gi", "memory_limit": "16Gi"}}),
     "stages.tune.memory_request 16Gi is more than node.memory 7680Mi - node.reserved_memory 2560Mi"),
])
def test_bad_cluster_values_stop_compile_and_submit_naming_the_field(mutate, field, tmp_path, capsys):
    from pipelines.compile import main as compile_main
    from pipelines.submit import main as submit_main

    config = _write_config(tmp_path, mutate)
    assert compile_main([str(config), str(tmp_path / "out.yaml")]) == 2
    assert not (tmp_path / "out.yaml").exists()
    assert field in capsys.readouterr().err
    assert submit_main([str(config), "--host", "http://h", "--publish-destination", "gs://b/p", "--dry-run"]) == 2
    assert field in capsys.readouterr().err


def test_submit_publish_destination_override_and_stage_images(capsys):
    from pipelines.submit import main

    assert main([str(CONFIGS / "demo.yaml"), "--host", "http://h", "--dry-run",
                 "--publish-destination", "gs://mushroom-artifacts/published"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["arguments"]["publish_destination"] == "gs://mushroom-artifacts/published"
    assert set(plan["images"].values()) == {CPU_IMAGE} and plan["pipeline_root"] is None


def test_images_entry_point_lists_what_the_compiled_yaml_names(capsys):
    from pipelines.images import main

    for name in ("paper", "demo"):
        assert main([str(CONFIGS / f"{name}.yaml")]) == 0
        printed = capsys.readouterr().out.split()
        assert sorted(printed) == sorted(set(EXPECTED_IMAGES[name].values()))
