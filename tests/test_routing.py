"""Routing (issue 23): the [[route]] language, its decisions, destination schedules, the rate
cap's pace, and the journal's claim order (urgent first, closed and full destinations held
back) on both engines. The delivery with real archives is in test_routing_delivery.py."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from support.niftigen import write_nifti

from node.errors import ConfigError
from node.net.pace import Pace
from node.service.routing import Facts, datatype_of, decide, object_of
from node.service.schedule import parse_schedule
from node.service.settings import config_from_dict

PACS = {"host": "127.0.0.1", "port": 4242, "ae_title": "ORTHANC"}


def _config(tmp_path: Path, routes: list, **extra):
    raw = {"node": {"state_dir": str(tmp_path / "var")},
           "destinations": {"pacs": dict(PACS), "research": dict(PACS, ae_title="RESEARCH"),
                            "web": {"url": "http://127.0.0.1:8042/dicom-web"}},
           "watch": [{"path": str(tmp_path / "inbox")}], "route": routes, **extra}
    return config_from_dict(raw)


def _error(tmp_path: Path, routes: list, **extra) -> str:
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, routes, **extra)
    message = caught.value.message
    assert "\n" not in message
    return message


# --- the language: every mistake is one line naming the key ---------------------------------

@pytest.mark.parametrize("route, named", [
    ({"when": {"suffix": {"regex": "T1w("}}, "to": ["pacs"]},
     "[[route]] '#1'.when.suffix.regex: 'T1w(' is not a valid regular expression"),
    ({"when": {"colour": "blue"}, "to": ["pacs"]},
     "[[route]] '#1'.when.colour: not a condition this node knows"),
    ({"when": {"subject": "01"}, "to": ["pacs"]}, "[[route]] '#1'.when.subject"),
    ({"name": "x", "when": {"suffix": "T1w"}, "to": ["nowhere"]},
     "[[route]] 'x'.to[0]: 'nowhere' is not a [destinations.NAME] (known: pacs, research, web)"),
    ({"name": "x", "to": ["pacs"], "colour": 1}, "[[route]] 'x': unknown key(s) colour"),
    ({"name": "x", "when": {"object": "mesh"}, "to": ["pacs"]}, "[[route]] 'x'.when.object"),
    ({"name": "x", "when": {"watch": "elsewhere"}, "to": ["pacs"]},
     "[[route]] 'x'.when.watch: 'elsewhere' is not a watched folder, so this route can never"),
    ({"name": "x", "to": [{"destination": "pacs", "iod": "hologram"}]},
     "[[route]] 'x'.to[0].iod"),
    ({"name": "x", "to": [{"destination": "pacs", "form": "seg"}]},
     "[[route]] 'x'.to[0]: unknown key(s) form"),
    ({"name": "x", "to": ["pacs"], "priority": "asap"}, "[[route]] 'x'.priority"),
    ({"name": "x", "when": {"sub": {"like": "0*"}}, "to": ["pacs"]},
     "[[route]] 'x'.when.sub: unknown operator 'like'"),
    ({"name": "x"}, "[[route]] 'x'.to: the destinations"),
    ({"name": "x", "to": ["pacs", "pacs"]}, "[[route]] 'x'.to: a destination is named twice"),
    ({"name": "x", "to": ["pacs"], "profile": "nope"}, "[[route]] 'x'.profile: 'nope' is not"),
])
def test_a_bad_route_is_one_line_naming_its_key(tmp_path, route, named):
    assert named in _error(tmp_path, [route])


def test_a_route_after_a_catch_all_can_never_match_and_is_refused(tmp_path):
    message = _error(tmp_path, [{"name": "all", "to": ["pacs"]},
                                {"name": "anat", "when": {"datatype": "anat"}, "to": ["research"]}])
    assert "[[route]] 'anat' can never match: route 'all' before it" in message
    # with continue = true the catch-all lets later routes add theirs: accepted
    _config(tmp_path, [{"name": "all", "to": ["pacs"], "continue": True},
                       {"name": "anat", "when": {"datatype": "anat"}, "to": ["research"]}])


def test_a_watch_that_names_a_destination_conflicts_with_routes(tmp_path):
    raw_watch = [{"path": str(tmp_path / "inbox"), "destination": "pacs"}]
    message = _error(tmp_path, [{"to": ["pacs"]}], watch=raw_watch)
    assert "[[watch]] #1: destination does not apply when [[route]] tables" in message


def test_schedules_and_time_zones_are_checked(tmp_path):
    for bad, named in [(["mon-fir 19:00-07:00"], "'mon-fir'"), (["mon 25:00-07:00"], "'25:00'"),
                       ("9 to 5", "'9 to 5'"), (["mon 08:00-08:00"], "same time")]:
        raw = {"node": {}, "destinations": {"pacs": dict(PACS, schedule=bad)}}
        with pytest.raises(ConfigError, match=r"\[destinations.pacs\].schedule") as caught:
            config_from_dict(raw)
        assert named in caught.value.message
    with pytest.raises(ConfigError, match=r"\[node\].timezone: 'Mars/Olympus'"):
        config_from_dict({"node": {"timezone": "Mars/Olympus"}})


# --- decisions ------------------------------------------------------------------------------

def _facts(name="sub-01_ses-1_T1w.nii.gz", datatype="anat", obj=None, sidecar=None,
           watch="/in"):
    from node.convert.source import bids_entities

    entities = bids_entities(Path(name))
    return Facts(entities, datatype, obj or object_of(entities, "image", True), Path(watch),
                 sidecar)


def test_first_match_wins_continue_adds_and_each_destination_gets_its_form(tmp_path):
    config = _config(tmp_path, [
        {"name": "everything", "continue": True, "to": ["pacs"]},
        {"name": "anat", "when": {"datatype": "anat", "suffix": ["T1w", "T2w"]},
         "to": [{"destination": "research", "iod": "enhanced", "compression": "jpeg-ls"}]},
        {"name": "func", "when": {"datatype": "func"}, "to": ["web"]},
    ])
    got = decide(config.routes, _facts(), "bids-mr")
    assert [(c.destination, c.form, c.route) for c in got.chosen] == [
        ("pacs", {}, "everything"),
        ("research", {"iod": "enhanced", "compression": "jpeg-ls"}, "anat")]
    assert json.loads(got.chosen[1].form_text) == {"compression": "jpeg-ls", "iod": "enhanced"}
    func = decide(config.routes, _facts("sub-01_task-rest_bold.nii.gz", "func"), "bids-mr")
    assert [c.destination for c in func.chosen] == ["pacs", "web"]
    assert "it wants datatype = 'anat', the file has datatype 'func'" in " ".join(func.why)


def test_sidecar_conditions_equal_list_regex_presence_and_not(tmp_path):
    config = _config(tmp_path, [
        {"name": "siemens-long-te", "to": ["research"], "when": {"sidecar": {
            "Manufacturer": {"regex": "(?i)^siemens"}, "EchoTime": {"not": 0.003},
            "RepetitionTime": {"present": True}, "ProtocolName": {"present": False},
            "MagneticFieldStrength": [1.5, 3]}}},
        {"name": "fallback", "to": ["pacs"]},
    ])
    good = {"Manufacturer": "SIEMENS", "EchoTime": 0.03, "RepetitionTime": 2.0,
            "MagneticFieldStrength": 3}
    assert decide(config.routes, _facts(sidecar=good), "p").chosen[0].destination == "research"
    for change in ({"Manufacturer": "GE"}, {"EchoTime": 0.003}, {"RepetitionTime": None},
                   {"ProtocolName": "t1"}, {"MagneticFieldStrength": 7}):
        sidecar = {k: v for k, v in {**good, **change}.items() if v is not None}
        chosen = decide(config.routes, _facts(sidecar=sidecar), "p").chosen
        assert [c.destination for c in chosen] == ["pacs"], change
    # no sidecar at all: every sidecar key is absent
    assert decide(config.routes, _facts(), "p").chosen[0].destination == "pacs"


def test_a_file_no_route_matches_is_refused_with_the_reasons(tmp_path):
    config = _config(tmp_path, [{"name": "segs", "when": {"object": "seg"}, "to": ["research"]}])
    got = decide(config.routes, _facts(), "p")
    assert got.chosen == ()
    assert got.refused.startswith("no route: route 'segs' does not match: it wants object")


def test_priority_comes_from_the_route_or_the_watch(tmp_path):
    config = _config(tmp_path, [{"name": "stat", "when": {"acq": "stat"}, "to": ["pacs"],
                                 "priority": "urgent"}, {"name": "rest", "to": ["pacs"]}])
    assert decide(config.routes, _facts("sub-1_acq-stat_T1w.nii"), "p").priority == 1
    assert decide(config.routes, _facts(), "p").priority == 0
    assert decide(config.routes, _facts(), "p", watch_priority=1).priority == 1


def test_a_hostile_sidecar_value_does_not_make_a_pattern_run_for_long(tmp_path):
    config = _config(tmp_path, [{"name": "r", "to": ["pacs"],
                                 "when": {"sidecar": {"SeriesDescription": {"regex": "(a+)+$"}}}}])
    got = decide(config.routes, _facts(sidecar={"SeriesDescription": "a" * 100000 + "!"}), "p")
    assert got.chosen == ()  # over the length searched: no match, and no minutes of backtracking


@pytest.mark.parametrize("relative, expected", [
    ("sub-01/anat/sub-01_T1w.nii.gz", "anat"),
    ("sub-01/ses-1/func/sub-01_ses-1_task-x_bold.nii", "func"),
    ("derivatives/fmriprep/sub-01/anat/sub-01_desc-brain_mask.nii.gz",
     "derivatives/fmriprep/anat"),
    ("derivatives/lesions/sub-01_dseg.nii.gz", "derivatives/lesions"),
    ("sub-01_T1w.nii.gz", ""),
])
def test_the_bids_datatype_folder(tmp_path, relative, expected):
    assert datatype_of(tmp_path / relative, tmp_path) == expected


def test_the_object_a_file_is():
    assert object_of({"suffix": "dseg"}, "image", True) == "seg"
    assert object_of({"suffix": "T1map"}, "image", True) == "pmap"
    assert object_of({"suffix": "T1w"}, "pmap", True) == "pmap"
    assert object_of({"suffix": "T1w"}, "auto", True) == "image"
    assert object_of({}, "image", False) == "dicom"


# --- schedules with an injected clock -------------------------------------------------------

def _at(text: str, zone="Europe/Berlin") -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def test_a_night_and_weekend_schedule_in_the_nodes_time_zone():
    s = parse_schedule("s", ["mon-fri 19:00-07:00", "sat-sun"], "Europe/Berlin")
    assert not s.is_open(_at("2026-12-07T10:00"))  # Monday morning: clinic hours
    assert s.is_open(_at("2026-12-07T06:59"))
    assert not s.is_open(_at("2026-12-07T07:00"))
    assert s.is_open(_at("2026-12-07T19:00"))
    assert s.is_open(_at("2026-12-12T13:00"))  # Saturday
    assert s.describe(_at("2026-12-07T10:00")) == "closed until 19:00"
    assert s.describe(_at("2026-12-11T23:00")) == "open until Mon 07:00"  # Friday night on
    # the same instant is 09:00 in Berlin but 03:00 in New York: the zone decides
    instant = _at("2026-12-07T09:00")
    assert not s.is_open(instant)
    assert parse_schedule("s", ["mon-fri 19:00-07:00"], "America/New_York").is_open(instant)
    # ranges of days wrap around the week
    assert parse_schedule("s", ["fri-mon"], "UTC").windows[0].days == frozenset({4, 5, 6, 0})


# --- the pace of a rate cap -----------------------------------------------------------------

class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_pace_spaces_instances_and_bytes():
    clock = _Clock()
    pace = Pace(per_second=4, clock=clock, sleep=clock.sleep)
    starts = []
    for _ in range(9):
        pace.wait(1)
        starts.append(clock.now)
    assert starts == [100 + i * 0.25 for i in range(9)]  # never more than 4 starts a second
    clock2 = _Clock()
    by_bytes = Pace(bytes_per_second=1000, clock=clock2, sleep=clock2.sleep)
    by_bytes.wait(1, 500)
    by_bytes.wait(1, 2000)
    by_bytes.wait(1, 10)
    assert clock2.now == pytest.approx(102.5)  # 0.5 s for the first, 2 s for the second
    assert Pace().wait(1000, 10**9) == 0.0  # no cap: never waits


# --- the claim order on both engines -------------------------------------------------------

def _enqueue(j, n: int, destination: str, priority: int = 0):
    job, created = j.enqueue(Path(f"/in/f{n}.nii"), f"{n:064x}", 10, "bids-mr", destination,
                             priority=priority)
    assert created
    return job


def test_urgent_jobs_are_claimed_first_and_go_while_the_schedule_is_closed(journal):
    bulk = [_enqueue(journal, n, "archive") for n in range(3)]
    urgent = _enqueue(journal, 10, "archive", priority=1)
    other = _enqueue(journal, 11, "pacs")
    now = bulk[-1].created + 1
    first = journal.claim(now=now, owner="a:1", closed=["archive"])
    assert first.id == urgent.id  # urgent first, though queued last
    second = journal.claim(now=now, owner="a:1", closed=["archive"])
    assert second.id == other.id  # the archive's bulk jobs wait outside its window
    assert journal.claim(now=now, owner="a:1", closed=["archive"]) is None
    # the window opens: they go, oldest first
    assert journal.claim(now=now, owner="a:1").id == bulk[0].id


def test_a_destination_at_its_cap_gives_no_job(journal):
    _enqueue(journal, 1, "archive", priority=1)
    plain = _enqueue(journal, 2, "pacs")
    now = plain.created + 1
    assert journal.claim(now=now, owner="a:1", full=["archive"]).id == plain.id
    assert journal.claim(now=now, owner="a:1", full=["archive"]) is None


def test_siblings_are_the_other_destinations_of_one_file(journal):
    a, _ = journal.enqueue(Path("/in/x.nii"), "f" * 64, 1, "bids-mr", "pacs", key="k1")
    b, _ = journal.enqueue(Path("/in/x.nii"), "f" * 64, 1, "bids-mr", "research", key="k2",
                           form='{"iod": "enhanced"}')
    journal.enqueue(Path("/in/y.nii"), "e" * 64, 1, "bids-mr", "pacs", key="k3")
    assert [s.id for s in journal.siblings(a)] == [b.id]
    assert journal.get(b.id).form == '{"iod": "enhanced"}'


# --- the console commands --------------------------------------------------------------------

def test_route_command_says_where_a_file_goes_and_why(tmp_path):
    inbox = tmp_path / "inbox"
    t1 = write_nifti(inbox / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
                     np.zeros((4, 4, 3), np.int16), np.eye(4), sidecar={"Manufacturer": "GE"})
    bold = write_nifti(inbox / "sub-01" / "func" / "sub-01_task-x_bold.nii.gz",
                       np.zeros((4, 4, 3), np.int16), np.eye(4))
    config = tmp_path / "node.toml"
    config.write_text(f"""
[node]
state_dir = "{tmp_path / 'var'}"
[destinations.pacs]
host = "127.0.0.1"
port = 4242
ae_title = "ORTHANC"
[destinations.research]
url = "http://127.0.0.1:8042/dicom-web"
[[watch]]
path = "{inbox}"
[[route]]
name = "anat-ge"
when = {{ datatype = "anat", sidecar = {{ Manufacturer = "GE" }} }}
to = ["pacs", {{ destination = "research", iod = "enhanced" }}]
""")
    run = subprocess.run([sys.executable, "-m", "node", "route", "--config", str(config),
                          str(t1), str(bold)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stderr  # the bold matches nothing
    assert "route 'anat-ge' matches: datatype = 'anat', sidecar.Manufacturer = 'GE'" in run.stdout
    assert "-> research: profile bids-mr, iod enhanced" in run.stdout
    assert "-> pacs: profile bids-mr, iod image" in run.stdout
    assert "-> nowhere: the node quarantines it" in run.stdout
    explained = subprocess.run(
        [sys.executable, "-m", "node", "convert", "--config", str(config), "--explain", str(t1)],
        capture_output=True, text=True, timeout=60)
    assert explained.returncode == 0, explained.stderr
    assert "PatientID" in explained.stdout and "-> research:" in explained.stdout
    missing = subprocess.run([sys.executable, "-m", "node", "route", "--config", str(config),
                              str(tmp_path / "nope.nii")], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nope.nii: no such file" in missing.stderr


@pytest.mark.peers  # PostgreSQL
def test_two_nodes_on_postgresql_take_the_urgent_jobs_before_any_bulk_job(pg_cluster):
    """Two nodes (two connections, two owners) claim at the same moment from one shared
    journal: whichever node claims, the urgent jobs go first, each to one node only."""
    import threading

    from node.service.journal import open_journal_at
    from node.service.journal.postgres import close_pool

    url = pg_cluster.fresh_database("routing_priority")
    first = open_journal_at(url)
    bulk = [_enqueue(first, n, "archive") for n in range(6)]
    urgent = [_enqueue(first, 100 + n, "archive", priority=1) for n in range(2)]
    now = time_after = urgent[-1].created + 1
    nodes = [first, open_journal_at(url)]
    taken: dict[str, list[int]] = {"a:1": [], "b:1": []}
    start = threading.Barrier(2)

    def work(store, owner: str) -> None:
        start.wait(timeout=10)
        job = store.claim(now=now, owner=owner)  # the bulk jobs are older, and open
        if job is not None:
            taken[owner].append(job.id)

    threads = [threading.Thread(target=work, args=pair) for pair in zip(nodes, taken, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    claimed = taken["a:1"] + taken["b:1"]
    assert sorted(claimed) == sorted(j.id for j in urgent)  # one urgent job each, no bulk
    # the window opens: the bulk jobs, oldest first, shared between the nodes
    rest = [nodes[i % 2].claim(now=time_after, owner=f"{'ab'[i % 2]}:1") for i in range(6)]
    assert [j.id for j in rest] == [j.id for j in bulk]
    for j in nodes:
        j.close()
    close_pool(url)


def test_a_derivative_seg_finds_its_image_in_the_raw_dataset_or_the_done_folder(tmp_path):
    from node.convert.derived import find_source_image
    from node.convert.source import bids_entities
    from node.errors import InputError

    raw = write_nifti(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
                      np.zeros((4, 4, 3), np.int16), np.eye(4))
    write_nifti(tmp_path / "bids" / "sub-01" / "anat" / "sub-01_desc-brain_mask.nii.gz",
                np.zeros((4, 4, 3), np.uint8), np.eye(4))  # derived: never the image
    seg = write_nifti(tmp_path / "bids" / "derivatives" / "lesions" / "sub-01" / "anat"
                      / "sub-01_desc-lesion_dseg.nii.gz", np.zeros((4, 4, 3), np.uint8),
                      np.eye(4))
    assert find_source_image(seg, bids_entities(seg), None) == raw
    done = tmp_path / "done" / "sub-01" / "anat"
    done.mkdir(parents=True)
    moved = raw.rename(done / raw.name)  # delivered and moved before its SEG came
    with pytest.raises(InputError, match="none beside it"):
        find_source_image(seg, bids_entities(seg), None)
    assert find_source_image(seg, bids_entities(seg), None, (done,)) == moved
    other = write_nifti(done / "sub-01_T2w.nii.gz", np.zeros((4, 4, 3), np.int16), np.eye(4))
    with pytest.raises(InputError, match="2 candidates in"):
        find_source_image(seg, bids_entities(seg), None, (done,))
    assert find_source_image(seg, bids_entities(seg), other) == other  # --source decides


# --- a file with several destinations: moved once, quarantined and released together -------

def _fan_out_node(tmp_path):
    from node.service.node import Node

    config = _config(tmp_path, [{"name": "both", "to": [
        "pacs", {"destination": "research", "iod": "enhanced"}]}])
    return Node(config, watch=False, deliver=False), config.watches[0]


def test_the_file_moves_only_when_every_destination_of_it_is_done(tmp_path):
    from support.journal import force_state

    from node.service.journal import JobState

    node, watch = _fan_out_node(tmp_path)
    source = write_nifti(watch.path / "sub-01" / "anat" / "sub-01_T1w.nii.gz",
                         np.zeros((4, 4, 3), np.int16), np.eye(4))
    first = node.enqueue_file(source, watch)
    pacs_job, research_job = node.journal.jobs()
    assert first.id == pacs_job.id and research_job.form == '{"iod": "enhanced"}'
    assert pacs_job.key != research_job.key  # one job per destination and form
    force_state(node.journal, pacs_job.id, JobState.DONE)
    node._source_done(node.journal.get(pacs_job.id))
    assert source.exists()  # the research copy is not sent yet
    force_state(node.journal, research_job.id, JobState.DONE)
    node._source_done(node.journal.get(research_job.id))
    assert not source.exists()
    moved = list((tmp_path / "var" / "done").rglob(source.name))
    assert [p.relative_to(p.parents[2]) for p in moved] == [Path("sub-01/anat") / source.name]
    node.shutdown()


def test_a_file_refused_for_all_its_destinations_is_released_for_all(tmp_path):
    from node.service.operations.jobs import delete_quarantined, release

    node, watch = _fan_out_node(tmp_path)
    source = write_nifti(watch.path / "sub-02_T1w.nii.gz", np.zeros((4, 4, 3), np.int16),
                         np.eye(4))
    node.enqueue_file(source, watch, sidecar_missing=True)
    jobs = node.journal.jobs()
    assert [j.state for j in jobs] == ["quarantined", "quarantined"]
    assert jobs[0].quarantine_path == jobs[1].quarantine_path and not source.exists()
    released = release(node.journal, jobs[1].id)
    assert released.state == "queued" and source.exists()
    assert [j.state for j in node.journal.jobs()] == ["queued", "queued"]
    # one destination's copy refused while the other still needs the file: a copy goes aside
    node._quarantine(node.journal.get(jobs[0].id), "the research archive refused it")
    assert source.exists()
    folder = Path(node.journal.get(jobs[0].id).quarantine_path)
    assert (folder / source.name).exists()
    assert "a copy: the file stays for job(s) 2" in next(folder.glob("*.reason.txt")).read_text()
    delete_quarantined(node.journal, jobs[0].id)
    assert [j.state for j in node.journal.jobs()] == ["cancelled", "queued"]
    node.shutdown()
