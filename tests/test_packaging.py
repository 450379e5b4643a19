"""What ships beside the package, read as files: the Dockerfile, the compose file and the
systemd unit agree with the repository (no external tool: the ``unit`` marker)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

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
    assert steps[0] == ("FROM", "python:3.11-slim-bookworm")
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
