from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.service.settings import config_from_dict

JUDGES = ("dciodvfy", "dcm2niix", "dcmdump", "dcmdjpls", "storescp", "echoscu", "storescu",
          "Orthanc", "chromium", "chromedriver", "systemd-analyze", "podman", "mmdebstrap")


def pytest_configure(config):
    config.addinivalue_line("markers", "peers: needs the Debian judges (Orthanc, DCMTK, "
                            "dciodvfy, dcm2niix); ./scripts/test installs them")
    config.addinivalue_line("markers", "unit: no external tool (every test not marked peers)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("peers") is None:
            item.add_marker(pytest.mark.unit)


def pytest_collection_finish(session):
    """Tests that need the judges refuse to run without them (never skipped: CI must run
    them); ``pytest -m unit`` runs anywhere."""
    if not any(item.get_closest_marker("peers") for item in session.items):
        return
    missing = [tool for tool in JUDGES if shutil.which(tool) is None and not (
        tool == "Orthanc" and Path("/usr/sbin/Orthanc").exists())]
    if not any(Path(p).exists() for p in orthanc_script.DICOMWEB_PLUGINS):
        missing.append("orthanc-dicomweb")
    if missing:
        raise pytest.UsageError(
            f"missing judge tools {missing}: run ./scripts/test, which installs them "
            "(or pytest -m unit for the tests that need none)"
        )


@pytest.fixture
def config():
    """Built-in defaults, as with no config file."""
    return config_from_dict({})


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"


# --- real peers: Orthanc (Debian's orthanc) and DCMTK's storescp -----------------------------

import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import orthanc as orthanc_script  # noqa: E402

NODE_AET = "DICOM_NODE"


free_port = orthanc_script.free_port


class Pacs:
    """A running Orthanc and the ways tests look into it (REST only)."""

    def __init__(self, server: orthanc_script.Orthanc) -> None:
        self.server = server
        self.port = server.dicom_port
        self.aet = server.aet

    def get(self, path: str):
        return self.server.get(path)

    def get_bytes(self, path: str) -> bytes:
        return self.server.request(path)

    def lookup(self, uid: str) -> str | None:
        import json

        found = json.loads(self.server.request("/tools/lookup", data=uid.encode(),
                                               method="POST"))
        return found[0]["ID"] if found else None

    def series(self, series_uid: str) -> dict | None:
        oid = self.lookup(series_uid)
        return self.get(f"/series/{oid}") if oid else None

    @property
    def web_url(self) -> str:
        """The DICOMweb base URL (an Orthanc started with dicomweb=True)."""
        return f"{self.server.url}/dicom-web"

    @property
    def password(self) -> str:
        return self.server.password

    def count_instances(self) -> int:
        return int(self.get("/statistics")["CountInstances"])

    def config_toml(self, path: Path, extra: str = "", node_extra: str = "") -> Path:
        """A node config whose default destination is this PACS; ``extra`` is more TOML for
        ``[destinations.pacs]`` (e.g. timeouts, a tls table)."""
        path.write_text(
            f'[node]\nae_title = "{NODE_AET}"\ndefault_destination = "pacs"\n{node_extra}\n'
            f'[destinations.pacs]\nhost = "127.0.0.1"\nport = {self.port}\n'
            f'ae_title = "{self.aet}"\n{extra}\n'
        )
        return path


def start_pacs(storage: Path, **kw) -> Pacs:
    server = orthanc_script.start(
        storage, http_port=free_port(), dicom_port=free_port(), node_aet=NODE_AET, **kw
    )
    return Pacs(server)


def orthanc_in(tmp_path_factory, name: str, **kw):
    """An Orthanc in its own storage folder, stopped when the fixture that yields it ends."""
    storage = tmp_path_factory.mktemp(name)
    yield start_pacs(storage, **kw)
    orthanc_script.stop(storage)


@pytest.fixture(scope="session")
def web_pacs(tmp_path_factory):
    """An Orthanc with Debian's DICOMweb plugin (orthanc-dicomweb) at ``server.url +
    "/dicom-web"``, its REST and DICOMweb behind the same login."""
    yield from orthanc_in(tmp_path_factory, "orthanc-web", dicomweb=True)


@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """One Orthanc for the test session, on free loopback ports, with its own storage."""
    yield from orthanc_in(tmp_path_factory, "orthanc")


def run_node(*args, cwd: Path | None = None, timeout: float = 300, env=None):
    """``python -m node ARGS`` as a user runs it."""
    import os

    return subprocess.run(
        [sys.executable, "-m", "node", *map(str, args)], capture_output=True, text=True,
        timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})},
    )


@pytest.fixture
def node_factory(tmp_path):
    """Node processes (tests/test_node.NodeProcess) killed at teardown, whatever happened."""
    nodes: list = []

    from support.node import NodeProcess

    def make(pacs_port: int, name: str = "node", **keys):
        node = NodeProcess(tmp_path / name, pacs_port, **keys)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def pg_cluster():
    """One private PostgreSQL for the session (Debian's postgresql, a free loopback port)."""
    from support.pgserver import Cluster

    cluster = Cluster()
    yield cluster
    cluster.destroy()


# --- a journal on both engines (SQLite; PostgreSQL with the peers) ---------------------------

JOURNAL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.peers)]


@pytest.fixture(params=JOURNAL_BACKENDS)
def location(request, tmp_path):
    """Where a fresh journal lives: a SQLite file, or an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "journal.sqlite"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.fresh_database(f"j{abs(hash(str(tmp_path))) % 10**9}")


@pytest.fixture
def journal(location):
    """A fresh journal at ``location``, closed (and its pool too) afterwards."""
    from node.service.journal import open_journal_at
    from node.service.journal.postgres import close_pool

    j = open_journal_at(location)
    yield j
    j.close()
    close_pool(str(location))
