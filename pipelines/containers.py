"""Run the pipeline's stages in their containers with ``kfp.local.DockerRunner``.

kfp 2.17's DockerRunner bind-mounts only the pipeline root (at the same path) and refuses
``volumes=``; every other host folder a stage writes (a local publish destination) needs a
``mounts=`` entry. The containers run as the image's own user (uid 10001 in
``images/Dockerfile``), so the host folders they write must be writable by it.

The image's reference and ID reach the stages as ``MUSHROOM_IMAGE_REF`` / ``MUSHROOM_IMAGE_ID``
(and ``MUSHROOM_IMAGE_DIGEST`` once pushed), which the quantize stage records in the bundle's
``metadata.json`` under ``provenance.image``.

Only :func:`docker_runner` and :func:`inspect_image` need the ``docker`` package (the
``container`` extra); the rest is plain Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mushroom.image_identity import IMAGE_ENV


@dataclass(frozen=True)
class ImageIdentity:
    """What a local image reference stands for."""

    reference: str
    id: str  # sha256:... of the image configuration (docker image ls shows its first 12 hex digits)
    digest: str | None  # repository digest, only for pulled or pushed images
    user: str  # the image's USER ("10001:10001"); empty means root
    size_bytes: int

    def environment(self) -> dict[str, str]:
        """The variables that tell a stage which image it runs in."""
        values = {"reference": self.reference, "id": self.id, "digest": self.digest}
        return {IMAGE_ENV[key]: value for key, value in values.items() if value}


def executor_images(pipeline_spec) -> dict[str, str]:
    """Executor name -> the image it names in a compiled ``PipelineSpec``."""
    executors = pipeline_spec.deployment_spec["executors"]
    return {name: executors[name]["container"]["image"] for name in executors.keys()
            if "container" in executors[name].keys()}


def pin_executor_images(pipeline_spec, image: str) -> dict[str, str]:
    """Make every container executor of ``pipeline_spec`` run ``image`` (in place).

    kfp.local runs each task in the image its executor names; the local container run uses
    the one CPU image it built for every stage, whatever the cluster images are.

    Returns:
        The images the executors named before.
    """
    before = executor_images(pipeline_spec)
    executors = pipeline_spec.deployment_spec["executors"]
    for name in before:
        executors[name]["container"]["image"] = image
    return before


def single_image(pipeline_spec) -> str:
    """The one image every executor names; several need an explicit ``--image``."""
    images = sorted(set(executor_images(pipeline_spec).values()))
    if len(images) != 1:
        raise ValueError(f"the pipeline's stages name {len(images)} images {images}; choose the one to run "
                         "every stage in with --image")
    return images[0]


def host_mounts(pipeline_root: str | Path, folders: list[str]) -> list[str]:
    """The host folders to bind-mount besides the pipeline root (DockerRunner mounts that one).

    Args:
        pipeline_root: The local pipeline root (absolute).
        folders: Folders the stages write, e.g. the publish destination; ``gs://`` URIs and
            folders inside the pipeline root need no mount.

    Returns:
        Absolute, de-duplicated paths, each mounted at the same path in the containers.
    """
    root = Path(pipeline_root).resolve()
    mounts: list[Path] = []
    for folder in folders:
        if "://" in folder:
            continue
        path = Path(folder).resolve()
        if path == root or root in path.parents:
            continue
        if any(m == path or m in path.parents for m in mounts):
            continue
        mounts = [m for m in mounts if path not in m.parents] + [path]
    return [str(m) for m in mounts]


def parse_user(user: str) -> tuple[int, int]:
    """``"10001:10001"`` or ``"10001"`` -> (uid, gid); names cannot be resolved on the host."""
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ValueError(f"image user {user!r} is not numeric: the host cannot give folders to it")
    return int(uid), int(gid or uid)


def prepare_host_folders(folders: list[str], uid: int, gid: int) -> str:
    """Create ``folders`` and let the containers' user write them.

    As root: give them to ``uid:gid``. Otherwise the folders stay the caller's and are made
    writable by everyone (the caller cannot chown); what the containers write inside stays
    theirs (readable, but deleting it needs root or a container).

    Returns:
        How the folders were made writable, for the log.
    """
    for folder in folders:
        Path(folder).mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        for folder in folders:
            os.chown(folder, uid, gid)
        return f"owned by {uid}:{gid}"
    for folder in folders:
        if Path(folder).stat().st_uid == uid:
            continue
        os.chmod(folder, 0o777)
    return f"writable by everyone (not root: cannot chown to {uid}:{gid})"


def task_owners(pipeline_root: str | Path, since: float) -> dict[str, dict[int, int]]:
    """Who wrote each task's files: task folder -> {uid: number of files written since ``since``}.

    kfp.local gives every task a folder ``<run>/[for-loop-N-iteration-I/...]<task>`` under the
    pipeline root (a tune trial task is two loops deep); a task that ran in the image as its user
    leaves files owned by that uid.
    """
    tasks: dict[str, dict[int, int]] = {}
    root = Path(pipeline_root)
    for path in root.rglob("*"):
        st = path.lstat()
        if not path.is_file() or st.st_mtime < since:
            continue
        parts = path.relative_to(root).parts[1:]  # below the run folder
        loops = next((i for i, part in enumerate(parts) if not part.startswith("for-loop-")), len(parts))
        task = "/".join(parts[:loops + 1])
        tasks.setdefault(task, {})
        tasks[task][st.st_uid] = tasks[task].get(st.st_uid, 0) + 1
    return dict(sorted(tasks.items()))


def check_task_owners(tasks: dict[str, dict[int, int]], uid: int) -> list[str]:
    """One line per task folder; raises if a task wrote a file as anyone but ``uid``."""
    if not tasks:
        raise RuntimeError("no task wrote a file under the pipeline root")
    lines = [f"  {task}: " + ", ".join(f"{n} files by uid {owner}" for owner, n in sorted(owners.items()))
             for task, owners in tasks.items()]
    strangers = sorted(task for task, owners in tasks.items() if set(owners) != {uid})
    if strangers:
        raise RuntimeError(f"tasks {strangers} wrote files as another user than the image's ({uid}):\n"
                           + "\n".join(lines))
    return lines


def inspect_image(reference: str) -> ImageIdentity:
    """The local image ``reference`` (pulled first if it is not local)."""
    import docker

    client = docker.from_env()
    try:
        try:
            image = client.images.get(reference)
        except docker.errors.ImageNotFound:
            print(f"Pulling image {reference!r} (not local)")
            image = client.images.pull(reference)
        attrs: dict[str, Any] = image.attrs
    finally:
        client.close()
    repo = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
    digests = [d for d in attrs.get("RepoDigests") or [] if d.split("@", 1)[0] == repo]
    return ImageIdentity(reference=reference, id=image.id, digest=digests[0].split("@", 1)[1] if digests else None,
                         user=(attrs.get("Config") or {}).get("User") or "", size_bytes=int(attrs.get("Size", 0)))


def docker_runner(identity: ImageIdentity, mounts: list[str]):
    """A DockerRunner that binds ``mounts`` at the same paths and tells stages their image."""
    from docker.types import Mount
    from kfp import local

    return local.DockerRunner(
        mounts=[Mount(target=path, source=path, type="bind") for path in mounts],
        # The compiled pipeline names its own image (a tag, maybe a digest) in the same variables;
        # the local image's identity replaces every one of them (an empty value counts as unset).
        environment={**dict.fromkeys(IMAGE_ENV.values(), ""), **identity.environment()},
    )
