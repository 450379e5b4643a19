"""The container image, built and run for real: a Debian base made with mmdebstrap
(scripts/base-image), the Dockerfile built with podman, the node run in it against the test
Orthanc on loopback (host network), a NIfTI dropped into the mounted inbox and found in
Orthanc, then SIGTERM: the node drains and exits 0. The image runs as a non-root user, has
a health check, no compiler and no build secret; its size is printed."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from support.node import drop, nifti_bytes, wait_until

pytestmark = pytest.mark.peers  # podman, buildah's build, mmdebstrap, runc (Debian)

BASE = "localhost/dicom-node-base:bookworm"
IMAGE = "localhost/dicom-node:test"
CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """podman with runc (crun refuses this kernel's hybrid cgroups) and the process limits
    this machine allows (podman's defaults exceed its hard limits)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    limits = [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"] if (
        args and args[0] in ("run", "create")) else []
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    proc = subprocess.run(["podman", *runtime, args[0], *limits, *args[1:]],
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {proc.stderr[-3000:]}")
    return proc


def _healthy(port: int) -> bool:
    """The node's /healthz says ok (on the host's loopback)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as rsp:
            return json.loads(rsp.read())["ok"]
    except OSError:
        return False


@pytest.fixture(scope="module")
def image():
    """The image, built from this checkout on a Debian base made here (no registry)."""
    if _podman("image", "exists", BASE, check=False).returncode != 0:
        made = subprocess.run([str(ROOT / "scripts" / "base-image")], capture_output=True,
                              text=True, timeout=900)
        assert made.returncode == 0, made.stdout + made.stderr
    secret = [f"--secret=id=pip_ca,src={CA}"] if CA.is_file() else []
    _podman("build", "--isolation=chroot", "--network=host", "--format=docker", *secret,
            f"--build-arg=BASE={BASE}", "-t", IMAGE, str(ROOT), timeout=1500)
    size = int(_podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    print(f"\nimage {IMAGE}: {size / 1024**2:.0f} MB (base {BASE})")
    return IMAGE


def test_the_image_runs_as_a_user_with_a_health_check_and_no_build_tools_or_secrets(image):
    info = json.loads(_podman("image", "inspect", image).stdout)[0]
    config = info["Config"]
    assert config["User"] == "dicomnode"
    health = info.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "healthz" in " ".join(health.get("Test", [])), info.keys()
    assert not any(e.startswith("PIP_CERT") for e in config.get("Env", []))
    probe = _podman("run", "--rm", "--network=host", "--entrypoint", "/bin/sh", image, "-c",
                    "id -u; for t in gcc cc make g++ apt-get; do command -v $t || true; done; "
                    "ls /run/secrets 2>/dev/null; ls /root/.cache 2>/dev/null; true")
    lines = probe.stdout.split()
    assert lines[0] == "10001", probe.stdout
    assert [w for w in lines[1:] if not w.endswith("apt-get")] == [], probe.stdout


def test_the_node_in_the_container_delivers_and_drains_on_sigterm(image, pacs, tmp_path):
    inbox, var = tmp_path / "inbox", tmp_path / "var"
    for folder in (inbox, var):
        folder.mkdir()
        os.chown(folder, 10001, 10001)
    metrics = free_port()
    name = f"dicom-node-test-{os.getpid()}"
    _podman("run", "-d", "--name", name, "--network=host",
            "-v", f"{inbox}:/data/inbox", "-v", f"{var}:/data/var",
            "-e", "DICOM_NODE_DESTINATIONS_PACS_HOST=127.0.0.1",
            "-e", f"DICOM_NODE_DESTINATIONS_PACS_PORT={pacs.port}",
            "-e", f"DICOM_NODE_NODE_METRICS_PORT={metrics}",
            "-e", "DICOM_NODE_NODE_METRICS_HOST=127.0.0.1",
            "-e", "DICOM_NODE_NODE_SHUTDOWN_SECONDS=20", image)
    try:
        wait_until(lambda: _healthy(metrics), 60, "the containerised node's /healthz")
        data = nifti_bytes(tmp_path, "sub-ctr01_T1w.nii.gz", seed=51)
        dropped = drop(inbox, "sub-ctr01_T1w.nii.gz", data)
        os.chown(dropped, 10001, 10001)
        before = pacs.count_instances()
        wait_until(lambda: pacs.count_instances() >= before + 5, 90,
                   "the series in Orthanc")
        wait_until(lambda: not dropped.exists(), 30, "the source moved to done/")
        t0 = time.monotonic()
        _podman("stop", "-t", "30", name, timeout=60)
        code = _podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        logs = _podman("logs", name).stderr + _podman("logs", name).stdout
    finally:
        _podman("rm", "-f", name, check=False)
    assert code == "0", logs[-3000:]
    assert time.monotonic() - t0 < 30
    # SIGTERM reached the node itself (not a shell), which drained and stopped
    assert "signal SIGTERM: finishing in-flight jobs, taking no new work" in logs, logs[-3000:]
    assert "stopped (pid 1)" in logs and "sending -> done" in logs
    assert (var / "journal.sqlite").exists() and any((var / "done").rglob("*.nii.gz"))


def test_the_stack_runs_as_a_pod_with_podman_kube_play(image, tmp_path):
    """deploy/kube.yaml (node + Debian's Orthanc in one pod), with this test's folders and a
    free loopback port: a dropped NIfTI reaches the pod's Orthanc; the pod goes down clean."""
    import yaml

    orthanc = "localhost/dicom-node-orthanc:bookworm"
    if _podman("image", "exists", orthanc, check=False).returncode != 0:
        made = subprocess.run([str(ROOT / "scripts" / "base-image"), "--orthanc"],
                              capture_output=True, text=True, timeout=900)
        assert made.returncode == 0, made.stdout + made.stderr
    pod = yaml.safe_load((ROOT / "deploy" / "kube.yaml").read_text())
    spec = pod["spec"]
    node = next(c for c in spec["containers"] if c["name"] == "node")
    node["image"] = image
    metrics = free_port()
    node["ports"][0]["hostPort"] = metrics
    assert node["ports"][0]["hostIP"] == "127.0.0.1"
    inbox, var = tmp_path / "inbox", tmp_path / "var"
    for folder, volume in ((inbox, "inbox"), (var, "var")):
        folder.mkdir()
        os.chown(folder, 10001, 10001)
        next(v for v in spec["volumes"] if v["name"] == volume)["hostPath"]["path"] = str(folder)
    pod["metadata"]["name"] = name = f"dicom-node-stack-{os.getpid()}"
    play = tmp_path / "kube.yaml"
    play.write_text(yaml.safe_dump(pod))
    conf = tmp_path / "containers.conf"  # runc and this machine's limits, as _podman uses
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", '
                    f'"nproc={nproc}:{nproc}"]\n[engine]\nruntime = "runc"\n')
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    up = subprocess.run(["podman", "kube", "play", str(play)], capture_output=True, text=True,
                        timeout=300, env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        wait_until(lambda: _healthy(metrics), 60, "the pod's node /healthz")
        dropped = drop(inbox, "sub-pod01_T1w.nii.gz",
                       nifti_bytes(tmp_path, "sub-pod01_T1w.nii.gz", seed=52))
        os.chown(dropped, 10001, 10001)

        def stored() -> int:
            probe = subprocess.run(
                ["podman", "exec", f"{name}-node", "python", "-c",
                 "import urllib.request, json; print(json.load(urllib.request.urlopen("
                 "'http://127.0.0.1:8042/statistics'))['CountInstances'])"],
                capture_output=True, text=True, timeout=30)
            return int(probe.stdout.strip() or 0)

        wait_until(lambda: stored() >= 5, 90, "the series in the pod's Orthanc")
        wait_until(lambda: not dropped.exists(), 30, "the source moved to done/")
    finally:
        down = subprocess.run(["podman", "kube", "down", str(play)], capture_output=True,
                              text=True, timeout=120, env=env)
    assert down.returncode == 0, down.stderr[-2000:]
    assert any((var / "done").rglob("*.nii.gz"))
