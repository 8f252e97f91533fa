"""The Vertex AI flavour: compiled YAML that aiplatform's own PipelineJob loads, and the request
``submit --vertex`` sends, checked offline (anonymous credentials, a recording client)."""

import json
from pathlib import Path

import pytest
import yaml
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform
from google.cloud.aiplatform_v1.types import AcceleratorType

from mushroom.cluster import VERTEX_ACCELERATOR_TYPES
from mushroom.config import load_config
from pipelines.compile import compile_pipeline
from pipelines.submit import main as submit_main
from pipelines.vertex import create_request, pipeline_job

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "pipelines" / "configs"
COMPILED = ROOT / "pipelines" / "compiled"
FLAVOURS = sorted(COMPILED.glob("*.vertex.yaml"))
PROJECT, REGION, ACCOUNT = "mushroom-lab", "europe-west4", "runner@mushroom-lab.iam.gserviceaccount.com"


def test_every_configuration_has_a_committed_vertex_flavour():
    assert [p.name for p in FLAVOURS] == [f"{c.stem}.vertex.yaml" for c in sorted(CONFIGS.glob("*.yaml"))]


@pytest.mark.parametrize("path", FLAVOURS, ids=lambda p: p.name)
def test_committed_vertex_flavour_is_up_to_date(path, tmp_path, monkeypatch):
    monkeypatch.delenv("MUSHROOM_IMAGE", raising=False)
    monkeypatch.delenv("MUSHROOM_GPU_IMAGE", raising=False)
    fresh = compile_pipeline(CONFIGS / path.name.replace(".vertex", ""), tmp_path / path.name, target="vertex")
    assert fresh.read_bytes() == path.read_bytes(), f"{path} is stale: run `make compile`"


@pytest.mark.parametrize("path", FLAVOURS, ids=lambda p: p.name)
def test_vertex_flavour_is_one_document_with_vertex_accelerators_and_limits(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and "platforms" not in docs[0]
    config = load_config(CONFIGS / path.name.replace(".vertex", ""))
    executors = docs[0]["deploymentSpec"]["executors"]
    from pipelines.pipeline import TUNE_TASKS

    tune_tasks = {"plan-trials": "tune-plan", "train-trials": "tune-trials", "select-trials": "tune-select"}
    stage_of = {}  # the stage whose schedule an executor has: the tune stage's tasks by TUNE_TASKS
    for name in executors:
        component = name.removeprefix("exec-").removesuffix("-2")  # -2: the second round's tasks
        stage_of[name] = TUNE_TASKS[tune_tasks[component]] if component in tune_tasks else component.split("-")[0]
    gpu_stages = set()
    for name, executor in executors.items():
        schedule = config.cluster.stages.of(stage_of[name])
        resources = executor["container"]["resources"]
        assert resources["resourceCpuLimit"] == (schedule.cpu_limit or schedule.cpu_request), name
        assert resources["resourceMemoryLimit"] == (schedule.memory_limit or schedule.memory_request), name
        if schedule.accelerator_count:
            gpu_stages.add(stage_of[name])
            accelerator = resources["accelerator"]
            assert accelerator["resourceType"] == config.cluster.vertex.accelerator_type
            assert accelerator["resourceCount"] == str(schedule.accelerator_count)
            assert executor["container"]["image"].endswith("-gpu")
        else:
            assert "accelerator" not in resources and not executor["container"]["image"].endswith("-gpu")
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert not {"gpu_node_selector", "gpu_tolerations"} & set(params), "Kubernetes-only parameters"
    if path.name.startswith("paper"):
        assert gpu_stages == {"tune", "train"}


def test_vertex_accelerators_are_aiplatform_enums():
    assert set(VERTEX_ACCELERATOR_TYPES) <= {m.name for m in AcceleratorType}


@pytest.mark.parametrize("path", FLAVOURS, ids=lambda p: p.name)
def test_aiplatform_pipeline_job_loads_the_flavour_and_sends_the_request_we_expect(path):
    config = load_config(CONFIGS / path.name.replace(".vertex", ""))
    arguments = {"publish_destination": "gs://mushroom-lab-artifacts/published", "seed": 7}
    job = pipeline_job(package=path, project=PROJECT, region=REGION, display_name="Run of quantized-mushroom (1a2b3)",
                       pipeline_root="gs://mushroom-lab-artifacts/root", arguments=arguments, enable_caching=False,
                       labels={"app": "quantized-mushroom"}, credentials=AnonymousCredentials())
    assert isinstance(job, aiplatform.PipelineJob)
    request = create_request(job, service_account=ACCOUNT, network="projects/1/global/networks/vpc")
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    sent = request["pipeline_job"]
    assert sent["serviceAccount"] == ACCOUNT and sent["network"] == "projects/1/global/networks/vpc"
    assert sent["labels"] == {"app": "quantized-mushroom"}
    assert sent["displayName"] == "Run of quantized-mushroom (1a2b3)"
    runtime = sent["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://mushroom-lab-artifacts/root"
    values = runtime["parameterValues"]
    assert values["publish_destination"] == arguments["publish_destination"] and values["seed"] == 7
    compiled = yaml.safe_load(path.read_text())
    assert sent["pipelineSpec"]["deploymentSpec"] == compiled["deploymentSpec"]
    # The DAG as compiled, except that caching is off for every task (enable_caching=False).
    sent_tasks, compiled_tasks = sent["pipelineSpec"]["root"]["dag"]["tasks"], compiled["root"]["dag"]["tasks"]
    assert sent_tasks.keys() == compiled_tasks.keys()
    for name, task in sent_tasks.items():
        if "cachingOptions" in task:
            assert task.pop("cachingOptions") == {"enableCache": False} or task.get("parameterIterator"), name
            compiled_tasks[name].pop("cachingOptions", None)
        assert task == compiled_tasks[name], name
    assert [m["model_name"] for m in compiled["root"]["inputDefinitions"]["parameters"]["model_configs"]
            ["defaultValue"]] == [m.model_name for m in config.models]


def _vertex_args(*extra: str, config: str = "paper.yaml") -> list[str]:
    return [str(CONFIGS / config), "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root",
            "gs://mushroom-lab-artifacts/root", "--publish-destination", "gs://mushroom-lab-artifacts/published",
            *extra]


def test_submit_vertex_dry_run_prints_the_request(capsys):
    assert submit_main(_vertex_args("--dry-run", "--run-name", "nightly", "--experiment", "study")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["experiment"] == "study"
    request = printed["create_pipeline_job_request"]
    job = request["pipeline_job"]
    assert job["displayName"] == "nightly"
    assert job["serviceAccount"] == f"mushroom-pipeline-runner@{PROJECT}.iam.gserviceaccount.com"
    assert job["labels"] == {"app": "quantized-mushroom", "config": "paper", "version": "0-1-0"}
    assert job["runtimeConfig"]["gcsOutputDirectory"] == "gs://mushroom-lab-artifacts/root"
    assert job["runtimeConfig"]["parameterValues"]["publish_destination"] == "gs://mushroom-lab-artifacts/published"
    executors = job["pipelineSpec (summary)"]["executors"]
    assert executors["exec-train-classifier"]["accelerator"] == "1 x NVIDIA_L4"
    assert executors["exec-train-classifier"]["image"].endswith("-gpu")
    assert "accelerator" not in executors["exec-evaluate-model"]


@pytest.mark.parametrize("args, message", [
    (["--vertex", "--project", PROJECT, "--dry-run"], "--vertex needs --region, --pipeline-root"),
    (["--vertex", "--region", REGION, "--pipeline-root", "gs://b/r", "--dry-run"], "--vertex needs --project"),
    (["--vertex", "--project", "P", "--region", REGION, "--pipeline-root", "gs://b/r", "--dry-run"],
     "--project 'P' is not a Google Cloud project id"),
    (["--vertex", "--project", PROJECT, "--region", "Europe West", "--pipeline-root", "gs://b/r", "--dry-run"],
     "--region 'Europe West' is not a Google Cloud region"),
    (["--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root", "/tmp/root", "--dry-run"],
     "--pipeline-root '/tmp/root': Vertex AI needs a gs:// prefix"),
    (["--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root", "gs://b/r", "--service-account",
      "mushroom-pipeline-runner", "--dry-run"], "Vertex AI runs as a Google service account; give its email"),
    (["--host", "http://h", "--service-account", ACCOUNT, "--dry-run"],
     "is not a Kubernetes service account name (a Google service-account email"),
    (["--host", "http://h", "--network", "projects/1/global/networks/v", "--dry-run"], "--network is a Vertex AI"),
])
def test_bad_submission_flags_are_one_line_and_exit_2(args, message, capsys):
    assert submit_main([str(CONFIGS / "paper.yaml"), "--publish-destination", "gs://b/p", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.strip().splitlines()) == 1


def _config_with(tmp_path, mutate) -> Path:
    data = yaml.safe_load((CONFIGS / "paper.yaml").read_text())
    mutate(data["cluster"])
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(vertex={"accelerator_type": "NVIDIA_TESLA_K80"}),
     "Vertex AI accelerator 'NVIDIA_TESLA_K80' is not one the GPU image runs on"),
    (lambda c: c.update(vertex={"accelerator_type": "nvidia.com/gpu"}),
     "Vertex AI accelerator 'nvidia.com/gpu'"),
    (lambda c: c.update(accelerator_type="NVIDIA_L4"),
     "unknown accelerator 'NVIDIA_L4' (a Vertex AI accelerator: set it as cluster.vertex.accelerator_type)"),
])
def test_an_accelerator_the_target_does_not_know_stops_compile_and_submit(mutate, message, tmp_path, capsys):
    from pipelines.compile import main as compile_main

    config = _config_with(tmp_path, mutate)
    for target in ("kfp", "vertex"):
        assert compile_main([str(config), str(tmp_path / "out.yaml"), "--target", target]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out.yaml").exists()
    args = _vertex_args("--dry-run")
    args[0] = str(config)
    assert submit_main(args) == 2
    assert message in capsys.readouterr().err


def test_a_stage_larger_than_any_vertex_machine_stops_the_vertex_flavour_only(tmp_path, capsys):
    from pipelines.compile import main as compile_main

    def huge(cluster):
        cluster["stages"]["evaluate"].update(memory_limit="700G")
        cluster["node"]["memory"] = "1000G"

    config = _config_with(tmp_path, huge)
    assert compile_main([str(config), str(tmp_path / "kfp.yaml")]) == 0
    capsys.readouterr()
    assert compile_main([str(config), str(tmp_path / "vertex.yaml"), "--target", "vertex"]) == 2
    assert "stages.evaluate.memory_limit 700G is more than Vertex AI's largest step machine" in capsys.readouterr().err


def test_a_missing_bucket_stops_submit_before_anything_is_sent(gcs_client, gcs_bucket, monkeypatch, capsys):
    import pipelines.submit as submit_module

    sent = []
    monkeypatch.setattr(submit_module, "submit", lambda *a, **k: sent.append(a))
    args = _vertex_args()
    args[args.index("--pipeline-root") + 1] = f"gs://{gcs_bucket.name}/root"
    args[args.index("--publish-destination") + 1] = "gs://no-such-bucket-4a1f/published"
    assert submit_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gs://no-such-bucket-4a1f/published: bucket 'no-such-bucket-4a1f' does not exist")
    assert len(err.strip().splitlines()) == 1 and sent == []
    assert list(gcs_client.list_blobs(gcs_bucket.name)) == []  # the test write was cleaned up

    args[args.index("--publish-destination") + 1] = f"gs://{gcs_bucket.name}/published"
    assert submit_main(args) == 0 and len(sent) == 1  # both writable: submitted (to the stand-in)
