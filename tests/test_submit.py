"""pipelines.submit end to end: a dry run says only that it is one, a refused test write stops the
submission, and --wait gives up with one line when its time has passed."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

import pipelines.submit as submit_module
from pipelines.submit import KFP_FINAL_STATES, WaitTimeout, wait_for

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "pipelines" / "configs" / "demo.yaml")
PROJECT, REGION = "mushroom-lab", "europe-west4"


def _vertex_args(*extra: str, root: str = "gs://mushroom-lab-artifacts/root",
                 published: str = "gs://mushroom-lab-artifacts/published") -> list[str]:
    return [DEMO, "--vertex", "--project", PROJECT, "--region", REGION, "--pipeline-root", root,
            "--publish-destination", published, *extra]


def test_vertex_dry_run_says_it_is_one_and_prints_only_the_request():
    """In its own process: aiplatform's logger writes to the real stdout, which pytest's capture
    would hide ("Creating PipelineJob", "PipelineJob created. Resource name: ...", "View Pipeline Job: ...")."""
    env = {k: v for k, v in os.environ.items() if k not in ("MUSHROOM_IMAGE", "MUSHROOM_GPU_IMAGE")}
    done = subprocess.run([sys.executable, "-m", "pipelines.submit", *_vertex_args("--dry-run")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["dry run: nothing is submitted and no bucket is touched; the "
                                        f"CreatePipelineJob request to vertex:{PROJECT}/{REGION} follows"]
    request = json.loads(done.stdout)["create_pipeline_job_request"]  # stdout is the request and nothing else
    assert request["parent"] == f"projects/{PROJECT}/locations/{REGION}"
    for claim in ("Creating PipelineJob", "PipelineJob created", "View Pipeline Job", "console.cloud.google.com"):
        assert claim not in done.stdout + done.stderr


class _Refusing(BaseHTTPRequestHandler):
    """Cloud Storage's JSON API as an account without storage.objects.create sees it: every
    request answered 403 with Google's error body. Also stands where a KFP API would be, to see
    that nothing reaches it."""

    requests: list[str] = []

    def _refuse(self):
        type(self).requests.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": {"code": 403, "message": "runner@mushroom-lab.iam.gserviceaccount.com does not "
                                     "have storage.objects.create access to the Google Cloud Storage object.",
                                     "errors": [{"reason": "forbidden", "domain": "global"}]}}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def refusing_server(monkeypatch):
    _Refusing.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    try:
        yield url
    finally:
        server.shutdown()


def test_a_refused_test_write_stops_submit_with_one_line_and_submits_nothing(refusing_server, capsys):
    code = submit_module.main([DEMO, "--host", refusing_server, "--publish-destination", "gs://locked-bucket/published"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: gs://locked-bucket/published: a test write was refused (")
    assert "does not have storage.objects.create access" in line  # the server's own reason, passed on
    assert line.endswith("; the publishing account needs permission to create objects there")
    # Only the test write reached the server, which is also the --host: nothing was compiled or submitted.
    paths = [r.split("?")[0] for r in _Refusing.requests]
    assert "POST /upload/storage/v1/b/locked-bucket/o" in paths
    assert all(p.split()[1].startswith(("/storage/v1/b/locked-bucket", "/upload/storage/v1/b/locked-bucket"))
               for p in paths), paths  # no KFP API call (/apis/v2beta1/...)


# --------------------------------------------------------------------------- --wait


class _Clock:
    """Time that moves only when waited on."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_returns_the_final_state():
    clock, states = _Clock(), iter(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    assert wait_for(lambda: next(states), KFP_FINAL_STATES, 600, 5, clock=lambda: clock.now,
                    sleep=clock.sleep) == "SUCCEEDED"
    assert clock.sleeps == [5, 5, 5]


def test_wait_gives_up_at_its_deadline_with_the_last_state():
    clock = _Clock()
    with pytest.raises(WaitTimeout) as late:
        wait_for(lambda: "RUNNING", KFP_FINAL_STATES, 12, 5, clock=lambda: clock.now, sleep=clock.sleep)
    assert late.value.state == "RUNNING"
    assert clock.sleeps == [5, 5, 2] and clock.now == 12  # never past the deadline


class _RunningForever:
    """Stands in for aiplatform's PipelineJob of a run that does not finish (no Vertex AI here)."""

    resource_name = f"projects/{PROJECT}/locations/{REGION}/pipelineJobs/demo-1"
    state = SimpleNamespace(name="PIPELINE_STATE_RUNNING")

    def submit(self, **kwargs):
        pass


def test_submit_wait_timeout_is_one_line_and_exit_1(gcs_client, gcs_bucket, monkeypatch, capsys):
    monkeypatch.setattr(submit_module, "vertex_job", lambda *a, **k: _RunningForever())
    monkeypatch.setitem(submit_module.POLL_S, "vertex", 0.05)
    args = _vertex_args("--wait", "1", "--run-name", "demo-1", root=f"gs://{gcs_bucket.name}/root",
                        published=f"gs://{gcs_bucket.name}/published")
    assert submit_module.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"submitted demo-1 to vertex:{PROJECT}/{REGION}: "
                                         f"{_RunningForever.resource_name}"]
    assert captured.err.splitlines() == [
        f"error: run demo-1 did not finish within --wait 1 s (last state: PIPELINE_STATE_RUNNING); it goes on running "
        f"on vertex:{PROJECT}/{REGION}: stopped waiting, nothing was cancelled"]


def test_wait_needs_a_positive_number_of_seconds(capsys):
    with pytest.raises(SystemExit) as stop:
        submit_module.main([DEMO, "--host", "http://h", "--wait", "0"])
    assert stop.value.code == 2 and "--wait: 0: give the seconds to wait, more than 0" in capsys.readouterr().err


# --------------------------------------------------------------------------- --no-cache


@pytest.mark.parametrize("no_cache", [False, True])
def test_vertex_no_cache_turns_every_task_off_and_without_it_each_stage_keeps_its_caching(no_cache, tmp_path,
                                                                                         monkeypatch):
    from google.auth.credentials import AnonymousCredentials

    from pipelines.compile import compile_pipeline
    from pipelines.vertex import create_request

    monkeypatch.delenv("MUSHROOM_IMAGE", raising=False)
    monkeypatch.delenv("MUSHROOM_GPU_IMAGE", raising=False)
    submission = submit_module.plan_submission(
        submit_module.build_parser().parse_args(_vertex_args(*(["--no-cache"] if no_cache else []))))
    assert submission.enable_caching is (False if no_cache else None)  # None: as compiled
    package = compile_pipeline(DEMO, tmp_path / "demo.vertex.yaml", target="vertex")
    job = submit_module.vertex_job(submission, package, credentials=AnonymousCredentials())
    sent = create_request(job, service_account=submission.service_account, network=None)["pipeline_job"]
    caching = {name: task.get("cachingOptions", {}).get("enableCache", False)
               for component in [sent["pipelineSpec"]["root"], *sent["pipelineSpec"]["components"].values()]
               for name, task in component.get("dag", {}).get("tasks", {}).items() if "componentRef" in task
               and not name.startswith("for-loop")}
    assert {"acquire-dataset", "train-classifier", "evaluate-model", "publish-bundle"} <= set(caching)
    if no_cache:
        assert not any(caching.values())
    else:  # demo.yaml leaves cluster.stages.*.caching at the defaults: publish off, the others on
        assert {name for name, on in caching.items() if not on} == {"publish-bundle"}


def test_kfp_no_cache_turns_every_task_off_and_without_it_each_stage_keeps_its_caching(tmp_path, monkeypatch, capsys):
    import kfp
    import yaml

    from pipelines.compile import compile_pipeline

    monkeypatch.delenv("MUSHROOM_IMAGE", raising=False)
    monkeypatch.delenv("MUSHROOM_GPU_IMAGE", raising=False)
    sent = []

    class Client:  # stands in for the KFP API: keeps what a run would be created from
        def __init__(self, host):
            self.host = host

        def create_run_from_pipeline_package(self, package, **kwargs):
            spec = next(yaml.safe_load_all(Path(package).read_text()))
            caching = {name: task.get("cachingOptions", {}).get("enableCache", False)
                       for component in [spec["root"], *spec["components"].values()]
                       for name, task in component.get("dag", {}).get("tasks", {}).items()}
            sent.append((kwargs["enable_caching"], caching))
            return SimpleNamespace(run_id="run-1")

    monkeypatch.setattr(kfp, "Client", Client)
    for extra in ([], ["--no-cache"]):
        args = submit_module.build_parser().parse_args(
            [DEMO, "--host", "http://kfp.example:8080", "--publish-destination", "gs://b/published", *extra])
        package = compile_pipeline(DEMO, tmp_path / f"demo{len(extra)}.yaml")
        submit_module.submit(submit_module.plan_submission(args), package)
    assert capsys.readouterr().out.count("submitted ") == 2
    (as_compiled, compiled_caching), (no_cache, caching_off) = sent
    # kfp.Client: None keeps each task's compiled option (demo.yaml: publish off, the others on).
    assert as_compiled is None
    assert {"train-classifier", "evaluate-model", "publish-bundle"} <= set(compiled_caching)
    assert {name for name, on in compiled_caching.items() if not on and not name.startswith("for-loop")} == {
        "publish-bundle"}
    # --no-cache: every task of every DAG, also inside the per-model loop, which kfp.Client's own
    # enable_caching=False would leave as compiled.
    assert no_cache is False and caching_off.keys() == compiled_caching.keys() and not any(caching_off.values())
