"""What ships beside the package, read as files: the Dockerfile, the compose file and the
systemd unit agree with the repository; and systemd's own scoring of the unit's sandbox
(systemd-analyze, the one test here that needs an external tool)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from node.service.settings import load_config


def _dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_matches_the_repository():
    steps = _dockerfile()
    # the base is a build argument whose default is a public Debian/Python image
    assert steps[0] == ("ARG", "BASE=python:3.11-slim-bookworm")
    assert steps[1] == ("FROM", "${BASE}")
    for word, rest in steps:
        if word == "COPY":
            *sources, _dest = shlex.split(rest)
            for src in sources:
                assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is missing"
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert "scripts/install" in runs  # the same install path as .ci/run (scripts/test)
    assert "scripts/install" in (ROOT / "scripts" / "test").read_text()
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    entry = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entry and "scripts/docker-entrypoint" in entry[0]
    assert [rest for word, rest in steps if word == "CMD"] == ['["watch"]']
    assert any(word == "EXPOSE" and "9464" in rest for word, rest in steps)
    health = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert not re.search(r"SECRET|PASSWORD|TOKEN", env)
    config_path = re.search(r"DICOM_NODE_CONFIG=(\S+)", env).group(1)
    shipped = ROOT / "config" / Path(config_path).name
    config = load_config(shipped)  # the container's config is valid
    assert config.watches[0].path == Path("/data/inbox")
    assert str(config.node.state_dir) == "/data/var" and config.node.metrics_port == 9464
    assert config.node.metrics_host == "0.0.0.0"  # scraped from outside the container
    volumes = [rest for word, rest in steps if word == "VOLUME"]
    assert "/data/inbox" in volumes[0] and "/data/var" in volumes[0]


def test_compose_and_systemd_unit():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["dicom-node"]["build"] == "."
    assert "orthancteam/orthanc" in services["orthanc"]["image"]
    env = services["dicom-node"]["environment"]
    assert env["DICOM_NODE_DESTINATIONS_PACS_HOST"] == "orthanc"
    unit = (ROOT / "config" / "dicom-node.service").read_text()
    assert re.search(r"^ExecStart=\S+/dicom-node watch$", unit, re.M)
    assert "KillSignal=SIGTERM" in unit
    assert "KillMode=mixed" in unit  # the node drains its workers; they are not signalled


@pytest.mark.peers  # systemd-analyze (Debian's systemd)
def test_the_systemd_unit_is_hardened_to_ok_by_systemd_analyze(tmp_path):
    """systemd's own scoring of the unit (offline: this machine's PID 1 need not be systemd)
    at 3.0 or below ("OK"), with the sandbox the node needs: writable state and inbox only."""
    unit = ROOT / "config" / "dicom-node.service"
    proc = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for dicom-node\.service: ([0-9.]+) (\w+)",
                      proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert float(found.group(1)) <= 3.0 and found.group(2) == "OK", found.group(0)
    text = unit.read_text()
    for directive in ("ProtectSystem=strict", "ProtectHome=true", "PrivateDevices=true",
                      "NoNewPrivileges=true", "SystemCallFilter=@system-service",
                      "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert re.search(rf"^{re.escape(directive)}$", text, re.M), directive
    writable = re.search(r"^ReadWritePaths=(.+)$", text, re.M).group(1).split()
    assert "/var/lib/dicom-node" in writable and any("inbox" in p for p in writable)
    assert re.search(r"^MemoryMax=\d+[KMG]$", text, re.M)
    weaker = (tmp_path / "dicom-node.service")  # the check can fail: without the sandbox
    weaker.write_text(re.sub(r"^(Protect|Private|Restrict|SystemCall|Capability|Memory)\S*$\n",
                             "", text, flags=re.M))
    worse = subprocess.run(["systemd-analyze", "security", "--offline=true", str(weaker)],
                           capture_output=True, text=True, timeout=60).stdout
    assert float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", worse).group(1)) > 3.0


def test_every_file_the_package_reads_is_in_its_package_data():
    """A non-editable install (pip install ., the container) gets only .py files and what
    package-data names: every other file under node/ must be named there (the journal's SQL
    once was not, and a built image could not open a journal)."""
    import fnmatch
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    missing = []
    for path in sorted((ROOT / "node").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT)
        covered = False
        for package, patterns in data.items():
            folder = ROOT / Path(*package.split("."))
            if folder in path.parents:
                inner = path.relative_to(folder).as_posix()
                covered |= any(fnmatch.fnmatch(inner, p) for p in patterns)
        if not covered:
            missing.append(str(relative))
    assert missing == []
