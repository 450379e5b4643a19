"""Shipping: config checking, environment overrides, the demo, Docker and systemd files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_node

from node.errors import ConfigError
from node.service.settings import apply_env_overrides, config_from_dict

pytestmark = pytest.mark.peers  # Orthanc, DCMTK, dciodvfy, dcm2niix


def _cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_check_config_ok_shows_settings_masks_secrets_and_echoes(pacs, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    cfg = pacs.config_toml(tmp_path / "node.toml")
    cfg.write_text(cfg.read_text().replace("[node]\n", f'[node]\nstate_dir = "{tmp_path}/var"\n')
                   + f'\n[[watch]]\npath = "{inbox}"\nprofile = "research-deidentified"\n'
                   '[profiles.research-deidentified]\npseudonym_secret = "s3cret-value"\n')
    proc = run_node("check-config", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "config OK" in proc.stdout and "echo pacs" in proc.stdout
    assert f"port = {pacs.port}" in proc.stdout and "key ****" in proc.stdout
    assert "s3cret-value" not in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[node]\nworkrs = 2\n', "[node]: unknown key(s) workrs"),
        ('[node]\nworkers = "two"\n', "[node].workers: write a whole number"),
        ('[node]\nlog_format = "xml"\n', '[node].log_format: write "plain" or "json"'),
        ('[destinations.pacs]\nhost = "h"\nport = 70000\nae_title = "A"\n', "not a TCP port"),
        ('[destinations.pacs]\nhost = "h"\nport = 104\n', "missing ae_title"),
        ('[destinations.pacs]\nhost = "h"\nport = 104\nae_title = "MUCH_TOO_LONG_AE_TITLE"\n',
         "must be 1-16 printable characters"),
        ('[[watch]]\npath = "in"\ndestination = "nowhere"\n', "destination 'nowhere' is not"),
        ('[destinations.a]\nhost = "h"\nport = 1\nae_title = "A"\n[destinations.b]\nhost = "h"\n'
         'port = 2\nae_title = "B"\n[[watch]]\npath = "in"\n',
         'no destination: set destination = "NAME" here or [node].default_destination'),
        ('[profiles.x.static]\nPatientSexx = "M"\n', "'PatientSexx' is not a DICOM attribute"),
        ('[profiles.x.static]\nStudyDate = "yesterday"\n', "StudyDate"),
    ],
)
def test_check_config_errors_name_file_key_and_fix(tmp_path, text, words):
    cfg = _cfg(tmp_path, text)
    proc = run_node("check-config", "--config", cfg, "--no-echo")
    assert proc.returncode == 2
    assert words in proc.stderr and str(cfg) in proc.stderr
    assert "Traceback" not in proc.stderr
    watch = run_node("watch", "--config", cfg)
    assert watch.returncode == 2 and words in watch.stderr  # the node refuses, same message


def test_filesystem_problems_stop_the_node(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = _cfg(tmp_path, f'[node]\nstate_dir = "{blocker}/var"\ndefault_destination = "p"\n'
               '[destinations.p]\nhost = "127.0.0.1"\nport = 9\nae_title = "P"\n'
               f'[[watch]]\npath = "{tmp_path}/missing-inbox"\n')
    for command in (["check-config", "--no-echo"], ["watch"]):
        proc = run_node(*command, "--config", cfg, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "[node].state_dir" in proc.stderr and "not writable" in proc.stderr
        assert "missing-inbox: no such folder; create it (mkdir -p" in proc.stderr


def test_a_watch_without_destination_uses_the_only_one(tmp_path):
    config = config_from_dict({
        "destinations": {"pacs": {"host": "h", "port": 1, "ae_title": "A"}},
        "watch": [{"path": str(tmp_path)}],
    })
    assert config.watches[0].destination == "pacs"


def test_environment_overrides():
    user = {"destinations": {"main-pacs": {"host": "a", "port": 1, "ae_title": "A"}}}
    env = {"DICOM_NODE_NODE_WORKERS": "4", "DICOM_NODE_NODE_AE_TITLE": "NODE2",
           "DICOM_NODE_DESTINATIONS_MAIN_PACS_HOST": "pacs.example.org",
           "DICOM_NODE_DESTINATIONS_MAIN_PACS_MAX_ASSOCIATIONS": "3",
           "DICOM_NODE_DESTINATIONS_BACKUP_HOST": "b", "DICOM_NODE_DESTINATIONS_BACKUP_PORT": "104",
           "DICOM_NODE_DESTINATIONS_BACKUP_AE_TITLE": "BACKUP",
           "DICOM_NODE_CONFIG": "ignored.toml", "DICOM_NODE_PSEUDONYM_SECRET": "ignored"}
    config = config_from_dict(apply_env_overrides(user, env))
    assert config.node.workers == 4 and config.node.ae_title == "NODE2"
    assert config.destinations["main-pacs"].host == "pacs.example.org"
    assert config.destinations["main-pacs"].max_associations == 3
    assert config.destinations["backup"].port == 104
    with pytest.raises(ConfigError, match="DICOM_NODE_NODE_WORKRS"):
        apply_env_overrides({}, {"DICOM_NODE_NODE_WORKRS": "1"})
    # variables outside the two prefixes are not ours: a Kubernetes Service named dicom-node
    # makes DICOM_NODE_PORT=tcp://... and DICOM_NODE_SERVICE_HOST; they are ignored
    k8s = {"DICOM_NODE_PORT": "tcp://127.0.0.1:4242", "DICOM_NODE_SERVICE_HOST": "127.0.0.1",
           "DICOM_NODE_PORT_4242_TCP_PORT": "4242", "DICOM_NODE_WATCH_PATH": "x"}
    assert apply_env_overrides({}, k8s) == {}


def test_demo_runs_end_to_end():
    """`./scripts/demo --once` without its install step (scripts/test installed everything)."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--once"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "instances 25" in proc.stdout and "patient  demo01" in proc.stdout
    assert "stopped the node and Orthanc" in proc.stdout
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--once"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "instances 25" in again.stdout  # twice works


def test_docker_entrypoint_says_what_to_fix(tmp_path):
    """The entrypoint checks the config and the volumes before it runs the node: a folder
    the container's user cannot write is one message with the fix, exit 2, no crash loop."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{blocker / "var"}"\n')
    env = {**os.environ, "DICOM_NODE_CONFIG": str(cfg),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(ROOT / "scripts" / "docker-entrypoint"), "status"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "state_dir" in done.stderr and "chown -R" in done.stderr
    good = tmp_path / "good.toml"
    good.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n')
    (tmp_path / "var").mkdir()
    from node.service.journal import Journal

    Journal(tmp_path / "var" / "journal.sqlite").close()
    ok = subprocess.run([str(ROOT / "scripts" / "docker-entrypoint"), "status"],
                        capture_output=True, text=True, timeout=60,
                        env={**env, "DICOM_NODE_CONFIG": str(good)})
    assert ok.returncode == 0 and "jobs:" in ok.stdout, ok.stderr


def test_scripts_orthanc_command(tmp_path):
    from conftest import free_port

    storage = tmp_path / "o"
    http, dicom = free_port(), free_port()
    start = subprocess.run([str(ROOT / "scripts" / "orthanc"), "start", "--background",
                            "--http-port", str(http), "--dicom-port", str(dicom),
                            "--storage", str(storage)], capture_output=True, text=True,
                           timeout=60)
    try:
        assert start.returncode == 0, start.stderr
        assert f"DICOM port {dicom}" in start.stdout
        echo = run_node("echo", "--host", "127.0.0.1", "--port", dicom, "--called-aet", "ORTHANC")
        assert echo.returncode == 0, echo.stderr
    finally:
        stop = subprocess.run([str(ROOT / "scripts" / "orthanc"), "stop", "--storage",
                               str(storage)], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stopped" in stop.stdout
    again = run_node("echo", "--host", "127.0.0.1", "--port", dicom, "--called-aet",
                     "ORTHANC")
    assert again.returncode == 1 and "connection refused" in again.stderr


def test_the_bundled_orthanc_rest_api_needs_its_password(pacs):
    import base64
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(pacs.server.url + "/patients", timeout=5)
    assert refused.value.code == 401
    wrong = base64.b64encode(b"dicom-node:guess").decode()
    req = urllib.request.Request(pacs.server.url + "/patients",
                                 headers={"Authorization": f"Basic {wrong}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=5)
    assert refused.value.code == 401
    assert isinstance(pacs.get("/patients"), list)  # with the generated password
    password = pacs.server.storage / "orthanc.password"
    assert password.stat().st_mode & 0o077 == 0 and len(password.read_text()) >= 20
