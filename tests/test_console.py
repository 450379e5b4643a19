"""The web console in a real browser (Debian's chromium, driven by Selenium through Debian's
chromium-driver), against a real node and the bundled Orthanc; and its safety rules over HTTP.

Screenshots of each page go to the test's output folder (for people; CI keeps none).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import NODE_AET, free_port, orthanc_script, run_node
from support.node import drop, nifti_bytes, wait_until

pytestmark = pytest.mark.peers  # chromium, Orthanc

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _click(driver, action: str, within: str = "main") -> None:
    """Press a button and wait for the page it leads to: every action redirects back with
    what happened (``?said=...``), and the test reaches each button from a clean URL."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    assert "said=" not in driver.current_url
    driver.find_element(By.CSS_SELECTOR, f"{within} button[data-action='{action}']").click()
    WebDriverWait(driver, 20).until(
        lambda d: "said=" in d.current_url
        and d.execute_script("return document.readyState") == "complete")


def _text(driver, css: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def test_an_operator_works_the_queue_in_a_browser(pacs, node_factory, tmp_path, browser):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    down_port, console_port = free_port(), free_port()
    node = node_factory(pacs.port, retry_base_seconds=300, retry_max_seconds=600,
                        max_attempts=100)
    inbox_down = node.tmp / "inbox-down"
    inbox_down.mkdir()
    node.config.write_text(
        node.config.read_text()
        + f'[[watch]]\npath = "{inbox_down}"\ndestination = "down"\nsettle_seconds = 1.0\n'
        f'[destinations.down]\nhost = "127.0.0.1"\nport = {down_port}\nae_title = "ORTHANC"\n'
        f"connect_timeout = 2\n[console]\nenabled = true\nport = {console_port}\n")
    node.start()
    url = f"http://127.0.0.1:{console_port}"
    drop(node.inbox, "sub-good_T1w.nii.gz", nifti_bytes(tmp_path, "g.nii.gz", seed=21))
    bad = nifti_bytes(tmp_path, "b.nii.gz", seed=22)
    drop(node.inbox, "sub-bad_T1w.nii.gz", bad[: len(bad) // 2])  # truncated
    drop(inbox_down, "sub-later_T1w.nii.gz", nifti_bytes(tmp_path, "l.nii.gz", seed=23))
    wait_until(lambda: sorted(node.states()) == ["done", "quarantined", "retry-wait"], 60,
               "one done, one quarantined, one waiting")

    browser.get(url + "/")
    assert _text(browser, "#count-done .n") == "1"
    assert _text(browser, "#count-quarantined .n") == "1"
    assert _text(browser, "#count-retry-wait .n") == "1"
    browser.save_screenshot(str(shots / "dashboard.png"))

    jobs = {Path(j["source"]).name: j for j in node.jobs()}
    waiting = jobs["sub-later_T1w.nii.gz"]["id"]
    browser.get(url + "/jobs?state=retry-wait")
    browser.save_screenshot(str(shots / "jobs.png"))
    browser.find_element("link text", str(waiting)).click()
    assert "refused" in _text(browser, "#timeline")  # the refused connection, decoded
    browser.save_screenshot(str(shots / "job-waiting.png"))

    storage = tmp_path / "orthanc-down"
    orthanc_script.start(storage, http_port=free_port(), dicom_port=down_port,
                         node_aet=NODE_AET)
    try:
        _click(browser, "retry")
        wait_until(lambda: node.jobs()[waiting - 1]["state"] == "done", 60, "the retried job")
        browser.get(f"{url}/jobs/{waiting}")
        assert _text(browser, "#job-state") == "done"
        browser.save_screenshot(str(shots / "job-done.png"))
    finally:
        orthanc_script.stop(storage)

    quarantined = jobs["sub-bad_T1w.nii.gz"]
    folder = Path(node.jobs()[quarantined["id"] - 1]["quarantine_path"])
    (folder / "sub-bad_T1w.nii.gz").write_bytes(bad)  # the operator fixes the file
    browser.get(url + "/quarantine")
    browser.save_screenshot(str(shots / "quarantine.png"))
    _click(browser, "release")
    wait_until(lambda: node.jobs()[quarantined["id"] - 1]["state"] == "done", 60,
               "the released file")

    browser.get(url + "/destinations")
    _click(browser, "pause", "#dest-pacs")
    assert "paused" in _text(browser, "#dest-pacs")
    browser.save_screenshot(str(shots / "destinations-paused.png"))
    drop(node.inbox, "sub-paused_T1w.nii.gz", nifti_bytes(tmp_path, "p.nii.gz", seed=24))
    wait_until(lambda: len(node.jobs()) == 4, 30, "the new file queued")
    time.sleep(3)  # several node loops: a paused destination is not sent to
    assert node.jobs()[3]["state"] == "queued"
    browser.get(url + "/destinations")
    _click(browser, "resume", "#dest-pacs")
    wait_until(lambda: node.jobs()[3]["state"] == "done", 60, "the file after resume")

    browser.get(url + "/audit")
    audit = _text(browser, "#audit")
    for action in ("retry", "quarantine release", "pause", "resume"):
        assert action in audit, action
    browser.save_screenshot(str(shots / "audit.png"))
    browser.get(f"{url}/jobs/{jobs['sub-good_T1w.nii.gz']['id']}")
    browser.save_screenshot(str(shots / "job-preview.png"))
    assert browser.find_element("css selector", "img.preview").get_attribute("naturalWidth") \
        not in (None, "0")
    assert node.stop() == 0


# --- safety, over HTTP ----------------------------------------------------------------------

def _request(url: str, method: str = "GET", headers: dict | None = None,
             data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError:  # not listening (yet)
        return 0, ""


OPERATOR, VIEWER = "op-" + "x" * 30, "view-" + "y" * 30


def test_tokens_roles_and_csrf_guard_every_action(tmp_path):
    from node.service.journal import Journal

    with Journal(tmp_path / "var" / "journal.sqlite") as journal:
        job, _ = journal.enqueue(tmp_path / "f.nii.gz", "0" * 64, 1, "bids-mr", "pacs")
        journal.transition(job.id, "quarantined", last_error="test")
    env = {"DICOM_NODE_CONSOLE_OPERATOR_TOKEN": OPERATOR,
           "DICOM_NODE_CONSOLE_VIEWER_TOKEN": VIEWER}
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n[destinations.pacs]\n'
                   'host = "127.0.0.1"\nport = 11112\nae_title = "PACS"\n'
                   '[console]\nauth = "token"\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "node", "console", "--config", str(cfg),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _request(url + "/healthz")[0] == 200, 30, "the console")
        action = f"{url}/api/jobs/{job.id}/cancel"
        assert _request(action, "POST")[0] == 401  # no token
        assert _request(url + "/api/jobs")[0] == 401
        assert _request(url + "/")[0] in (200, 303)  # the login page
        viewer = {"Authorization": f"Bearer {VIEWER}"}
        code, body = _request(url + "/api/jobs", headers=viewer)
        assert code == 200 and json.loads(body)["jobs"][0]["id"] == job.id
        today = time.strftime("%Y-%m-%d")
        for date, expected in ((today, 1), ("2000-01-01", 0), ("not-a-date", 1)):
            code, body = _request(f"{url}/api/jobs?date={date}", headers=viewer)
            assert code == 200 and json.loads(body)["total"] == expected, date
        assert _request(action, "POST", viewer)[0] == 403  # a viewer cannot act
        # a browser's cookie login: every action needs the CSRF token too
        cookie = {"Cookie": f"dn_token={OPERATOR}; dn_csrf=abc123abc123"}
        assert _request(action, "POST", cookie)[0] == 403
        assert _request(action, "POST", {**cookie, "X-CSRF-Token": "wrong"})[0] == 403
        code, body = _request(action, "POST", {**cookie, "X-CSRF-Token": "abc123abc123"})
        assert code == 200 and json.loads(body)["ok"], body
        code, body = _request(f"{url}/api/jobs/99999/cancel", "POST",
                              {"Authorization": f"Bearer {OPERATOR}"})
        assert code == 404 and "Traceback" not in body
        assert _request(f"{url}/jobs/99999", headers=viewer)[0] == 404
        assert _request(f"{url}/jobs/not-a-number", headers=viewer)[0] == 404
        code, body = _request(url + "/api/audit", headers=viewer)
        rows = json.loads(body)["audit"]
        assert rows[0]["action"] == "cancel" and rows[0]["who"] == "operator"
        code, csv_text = _request(url + "/audit.csv", headers=viewer)
        assert code == 200 and "cancel" in csv_text.splitlines()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_public_bind_without_auth_refuses_to_start(tmp_path):
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n')
    # refused before anything binds: no traffic leaves loopback
    proc = run_node("console", "--config", cfg, "--host", "0.0.0.0", "--port", "18999",
                    timeout=60)
    assert proc.returncode == 2 and "not a loopback address" in proc.stderr
    assert proc.stderr.count("\n") == 1
    cfg.write_text(cfg.read_text() + '[console]\nauth = "token"\n')
    proc = run_node("console", "--config", cfg, "--host", "0.0.0.0", "--port", "18999",
                    env={"DICOM_NODE_CONSOLE_OPERATOR_TOKEN": "",
                         "DICOM_NODE_CONSOLE_VIEWER_TOKEN": ""}, timeout=60)
    assert proc.returncode == 2 and "export the token" in proc.stderr


def test_the_cli_verbs_are_audited_too(tmp_path):
    from node.service.journal import Journal

    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nstate_dir = "{tmp_path / "var"}"\n[destinations.pacs]\n'
                   'host = "127.0.0.1"\nport = 11112\nae_title = "PACS"\n')
    with Journal(tmp_path / "var" / "journal.sqlite") as journal:
        job, _ = journal.enqueue(tmp_path / "f.nii.gz", "1" * 64, 1, "bids-mr", "pacs")
    assert run_node("pause", "pacs", "--config", cfg).returncode == 0
    assert run_node("resume", "pacs", "--config", cfg).returncode == 0
    assert run_node("cancel", str(job.id), "--config", cfg).returncode == 0
    refused = run_node("cancel", str(job.id), "--config", cfg)
    assert refused.returncode == 2 and "only a waiting" in refused.stderr
    assert run_node("pause", "nowhere", "--config", cfg).returncode == 2
    with Journal(tmp_path / "var" / "journal.sqlite") as journal:
        rows = journal.audit_log()
    assert [r["action"] for r in reversed(rows)][:4] == ["pause", "resume", "cancel", "cancel"]
    assert all(r["via"] == "cli" for r in rows)
    assert rows[0]["result"].startswith("refused")
    shutil.rmtree(tmp_path / "var")


def test_the_console_shows_a_files_destinations_and_each_schedule(pacs, node_factory, tmp_path,
                                                                   browser):
    """Routing (issue 23): one file, two destinations; the second one's schedule is closed
    (a weekday three days from now only), so its copy waits in its backlog."""
    import datetime as dt

    shots = tmp_path / "screenshots"
    shots.mkdir()
    console_port = free_port()
    later = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[
        (dt.datetime.now(dt.UTC).weekday() + 3) % 7]
    node = node_factory(pacs.port, timezone='"UTC"', destination_toml=f"""
[destinations.later]
host = "127.0.0.1"
port = {pacs.port}
ae_title = "{pacs.aet}"
schedule = ["{later}"]
max_instances_per_second = 3
[[route]]
name = "both"
to = ["pacs", {{ destination = "later", iod = "enhanced" }}]
[console]
enabled = true
port = {console_port}
""")
    node.start()
    url = f"http://127.0.0.1:{console_port}"
    drop(node.inbox, "sub-two_T1w.nii.gz", nifti_bytes(tmp_path, "t.nii.gz", seed=31))
    wait_until(lambda: sorted(node.states()) == ["done", "queued"], 60,
               "the PACS copy done, the other held by its schedule")
    jobs = {j["destination"]: j for j in node.jobs()}
    browser.get(url + "/destinations")
    browser.save_screenshot(str(shots / "destinations.png"))
    assert _text(browser, "#dest-later .schedule").startswith("closed until ")
    assert _text(browser, "#dest-later .rate") == "3 instances/s"
    assert _text(browser, "#dest-later .backlog") == "1"
    assert _text(browser, "#dest-later .cap") == "1"  # a rate cap sends one job at a time
    assert _text(browser, "#dest-pacs .schedule") == "open (no schedule)"
    assert _text(browser, "#dest-pacs .backlog") == "0"
    browser.get(url + f"/jobs/{jobs['pacs']['id']}")
    browser.save_screenshot(str(shots / "job-copies.png"))
    rows = _text(browser, "#copies").splitlines()
    assert any("pacs" in r and "done" in r for r in rows), rows
    assert any("later" in r and '"iod": "enhanced"' in r and "queued" in r for r in rows), rows
    assert (node.inbox / "sub-two_T1w.nii.gz").exists()  # kept: one destination is not done
    status = node.cli("status")
    assert "destination later:" in status.stdout and "backlog 1" in status.stdout
    assert "schedule closed until" in status.stdout
