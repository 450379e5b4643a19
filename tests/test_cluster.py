"""Several nodes, one PostgreSQL journal (a real PostgreSQL started by the tests, Debian's
postgresql; the bundled Orthanc): a killed node's jobs are finished by the others, nothing is
sent twice or lost, a database restart is survived, two nodes watching one folder enqueue a
file once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_node
from support.niftigen import affine_from, ramp_data, write_nifti
from support.node import drop, nifti_bytes, wait_until

pytestmark = pytest.mark.peers  # PostgreSQL, Orthanc (the last test needs neither)

LEASE = 10.0


def _config(tmp: Path, name: str, url: str, pacs_port: int, extra: str = "") -> Path:
    state = tmp / name / "var"
    state.mkdir(parents=True, exist_ok=True)
    cfg = tmp / name / "node.toml"
    cfg.write_text(
        f'[node]\nae_title = "DICOM_NODE"\ndefault_destination = "pacs"\njournal = "{url}"\n'
        f'node_id = "{name}"\nstate_dir = "{state}"\nlease_seconds = {LEASE}\nworkers = 2\n'
        "retry_base_seconds = 0.5\nretry_max_seconds = 2\nrescan_seconds = 2\n"
        "echo_interval_seconds = 600\n"
        f'[destinations.pacs]\nhost = "127.0.0.1"\nport = {pacs_port}\nae_title = "ORTHANC"\n'
        "dimse_timeout = 20\n" + extra)
    return cfg


def _journal(url: str):
    from node.service.journal import open_journal_at

    return open_journal_at(url)


def _jobs(url: str) -> list:
    journal = _journal(url)
    try:
        return journal.jobs()
    finally:
        journal.close()


def _start(cfg: Path, command: str = "work") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "node", command, "--config", str(cfg)],
                            stdout=open(cfg.parent / "node.log", "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT)


def test_three_nodes_survive_one_killed_mid_delivery(tmp_path, pacs, pg_cluster):
    url = pg_cluster.fresh_database("three_nodes")
    src = tmp_path / "src"
    for i in range(40):
        write_nifti(src / f"sub-c{i:02d}_T1w.nii.gz", ramp_data((48, 40, 24), "int16", seed=i),
                    affine_from(np.eye(3)))
    feeder = _config(tmp_path, "feeder", url, pacs.port)
    enqueued = run_node("ingest", src, "--to", "pacs", "--enqueue-only", "--config", feeder)
    assert enqueued.returncode == 0, enqueued.stderr
    assert len(_jobs(url)) == 40
    configs = [_config(tmp_path, f"n{k}", url, pacs.port) for k in (1, 2, 3)]
    procs = [_start(cfg) for cfg in configs]
    try:
        def victim_busy() -> bool:
            return any(j.owner and j.owner.startswith("n2:") and j.state in (
                "converting", "sending") for j in _jobs(url))
        wait_until(victim_busy, 60, "node n2 to hold a job")
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.time()
        procs[1].wait(timeout=10)
        wait_until(lambda: all(j.state == "done" for j in _jobs(url)), 180, "all 40 done")
        finished = time.time()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    jobs = _jobs(url)
    assert len(jobs) == 40 and {j.state for j in jobs} == {"done"}
    for job in jobs:  # every series complete in the PACS
        assert len(pacs.series(job.series_uid)["Instances"]) == 24, job.id
    journal = _journal(url)
    try:
        history = journal.conn.execute(
            "SELECT job_id, at, from_state, to_state, owner FROM history ORDER BY at, id"
        ).fetchall()
    finally:
        journal.close()
    done = [row for row in history if row[3] == "done"]
    assert sorted(r[0] for r in done) == sorted(j.id for j in jobs)  # each done once
    taken_over = {row[0] for row in history if row[3] == "queued" and row[2] in (
        "converting", "sending") and row[4] and row[4].startswith("n2:")}
    assert taken_over, "the killed node held jobs that others resumed"
    assert finished - killed_at < LEASE * 2 + 60
    # no job held by two live leases: after n2's claim, nobody else claims the job before
    # its lease ran out and the job was put back (a "resumed" transition)
    for job_id in taken_over:
        rows = [r for r in history if r[0] == job_id]
        claims = [r for r in rows if r[3] == "converting"]
        for first, second in zip(claims, claims[1:], strict=False):
            back = [r for r in rows if r[3] == "queued" and first[1] <= r[1] <= second[1]]
            assert back, f"job {job_id} claimed again before it was put back"
    nodes = run_node("nodes", "--config", configs[0], "--json")
    assert nodes.returncode == 0, nodes.stderr
    import json

    listed = {n["node"]: n for n in json.loads(nodes.stdout)}
    assert {"n1", "n2", "n3"} <= set(listed) and listed["n2"]["stopped"] is False


def test_a_database_restart_is_survived(tmp_path, pacs, pg_cluster, node_factory):
    url = pg_cluster.fresh_database("restart")
    node = node_factory(pacs.port, journal=f'"{url}"', node_id='"solo"')
    node.start()
    drop(node.inbox, "sub-r1_T1w.nii.gz", nifti_bytes(tmp_path, "r1.nii.gz", seed=31))
    wait_until(lambda: [j.state for j in _jobs(url)] == ["done"], 60, "the first file")
    pg_cluster.stop()
    try:
        drop(node.inbox, "sub-r2_T1w.nii.gz", nifti_bytes(tmp_path, "r2.nii.gz", seed=32))

        def degraded() -> bool:
            import json
            import urllib.error
            import urllib.request

            try:
                urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/healthz",
                                       timeout=2)
            except urllib.error.HTTPError as exc:
                return "journal database" in json.loads(exc.read()).get("degraded", "")
            except OSError:
                return False
            return False
        wait_until(degraded, 60, "/healthz to say degraded")
    finally:
        pg_cluster.start()
    wait_until(lambda: sorted(j.state for j in _jobs(url)) == ["done", "done"], 90,
               "the second file after the restart")
    assert node.healthy()
    assert node.stop() == 0


def test_two_nodes_watching_one_folder_enqueue_each_file_once(tmp_path, pacs, pg_cluster):
    url = pg_cluster.fresh_database("shared_inbox")
    inbox = tmp_path / "shared"
    inbox.mkdir()
    watch = f'[[watch]]\npath = "{inbox}"\nsettle_seconds = 0.5\nafter = "keep"\n'
    procs = [_start(_config(tmp_path, name, url, pacs.port, watch), "watch")
             for name in ("w1", "w2")]
    try:
        time.sleep(3)
        for i in range(6):
            drop(inbox, f"sub-s{i}_T1w.nii.gz", nifti_bytes(tmp_path, f"s{i}.nii.gz", seed=40 + i))
        wait_until(lambda: len(_jobs(url)) == 6 and all(j.state == "done" for j in _jobs(url)),
                   90, "six files, done")
        time.sleep(3)  # both nodes have rescanned the folder since
        jobs = _jobs(url)
        assert len(jobs) == 6 and len({j.sha256 for j in jobs}) == 6
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
    journal = _journal(url)
    try:
        sent = journal.conn.execute("SELECT count(*) FROM history WHERE to_state = 'sending'"
                                  ).fetchone()[0]
    finally:
        journal.close()
    assert sent == 6  # each delivered once, by one of the two


def test_a_sqlite_journal_migrates_into_postgresql(tmp_path, pg_cluster):
    from node.service.journal import Journal

    sqlite = tmp_path / "var" / "journal.sqlite"
    with Journal(sqlite) as journal:
        for i in range(5):
            job, _ = journal.enqueue(Path(f"/in/{i}.nii"), f"{i:064x}", 1, "bids-mr", "pacs")
        journal.claim(owner="old:1")
        journal.audit("me", "cli", "retry", "job 1", "ok")
    url = pg_cluster.fresh_database("migrated")
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n')
    proc = run_node("journal", "migrate", "--to", url, "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert "5 jobs" in proc.stdout
    moved = _journal(url)
    try:
        assert [j.state for j in moved.jobs()] == ["converting"] + ["queued"] * 4
        assert len(moved.history(1)) == 2 and moved.audit_log()[0]["action"] == "retry"
        new, created = moved.enqueue(Path("/in/new.nii"), "f" * 64, 1, "bids-mr", "pacs")
        assert created and new.id == 6  # the id sequence moved past the copied rows
    finally:
        moved.close()
    again = run_node("journal", "migrate", "--to", url, "--config", cfg)
    assert again.returncode == 2 and "already holds jobs" in again.stderr


def test_node_ids_are_unique_and_passwords_stay_out_of_the_url(tmp_path, pacs, pg_cluster):
    url = pg_cluster.fresh_database("ids")
    first = _start(_config(tmp_path, "same", url, pacs.port))
    try:
        wait_until(lambda: "same" in run_node("nodes", "--config",
                                              _config(tmp_path, "viewer", url, pacs.port)
                                              ).stdout, 30, "the first node")
        twin = _config(tmp_path, "twin", url, pacs.port).read_text().replace(
            'node_id = "twin"', 'node_id = "same"')
        (tmp_path / "twin" / "node.toml").write_text(twin)
        proc = run_node("work", "--config", tmp_path / "twin" / "node.toml", timeout=60)
        assert proc.returncode == 2 and "node id 'same' is in use" in proc.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    secret = url.replace("dicom_node@", "dicom_node:hunter2@")
    cfg = _config(tmp_path, "secret", secret, pacs.port)
    proc = run_node("jobs", "--config", cfg)
    assert proc.returncode == 2 and "no password in the URL" in proc.stderr
    assert "hunter2" not in proc.stderr


def test_a_node_reaches_shared_storage_through_its_path_map(tmp_path, pacs, pg_cluster):
    """The journal names files as the enqueuing node mounts them; this node mounts the
    share elsewhere and maps the prefix."""
    from node.convert.source import content_digest

    url = pg_cluster.fresh_database("path_map")
    real = tmp_path / "mounted-here"
    path = write_nifti(real / "sub-pm_T1w.nii.gz", ramp_data((16, 12, 4), "int16", seed=77),
                       affine_from(np.eye(3)))
    journal = _journal(url)
    try:
        job, _ = journal.enqueue(Path("/shared/archive/sub-pm_T1w.nii.gz"),
                                 content_digest(path), path.stat().st_size, "bids-mr", "pacs",
                                 after="keep")
    finally:
        journal.close()
    cfg = _config(tmp_path, "mapper", url, pacs.port,
                  "").read_text().replace("[destinations.pacs]",
                                          f'path_map = ["/shared/archive={real}"]\n'
                                          "[destinations.pacs]")
    (tmp_path / "mapper" / "node.toml").write_text(cfg)
    proc = _start(tmp_path / "mapper" / "node.toml")
    try:
        wait_until(lambda: _jobs(url)[0].state == "done", 60, "the mapped job")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert len(pacs.series(_jobs(url)[0].series_uid)["Instances"]) == 4
    assert path.exists()  # after = "keep": the share is not touched
