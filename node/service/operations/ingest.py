"""Archive mode (``dicom-node ingest``): enqueue a whole tree, then deliver it, resumably."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class IngestResult:
    job_ids: list[int]
    states: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return set(self.states) <= {"done"}


def ingest(
    config, directory: Path, destination: str, profile: str, *, enqueue_only: bool = False,
    on_enqueue: Callable[[int, int], None] | None = None,
    on_enqueued: Callable[[int, int | None], None] | None = None,
    on_deliver: Callable[[int, int], None] | None = None,
    poll_seconds: float = 0.5, routed: bool = True, priority: str = "normal",
) -> IngestResult:
    """Archive mode: enqueue every wanted file under ``directory`` (kept where it is), then
    deliver until those jobs are finished. Resumable: content already in the journal is not
    enqueued twice, and a second run picks up what is left.

    Beside a running node (it holds the state folder's lock) ingest only enqueues, and waits
    while that node delivers: nothing is reset or worked twice. ``on_enqueued(n, pid)`` says
    how many jobs there are and which node delivers them (None: this process).

    ``routed``: the config's [[route]] tables decide where each file goes (False: all go to
    ``destination``, which the operator named). ``priority``: "urgent" overtakes any backlog.
    """
    import dataclasses

    from node.service.journal import NodeLock
    from node.service.node import Node
    from node.service.settings import WatchSettings
    from node.service.watcher import scan

    if not routed:
        config = dataclasses.replace(config, routes=())
    tree = WatchSettings(path=directory.resolve(), destination=destination, profile=profile,
                         after="keep", priority=priority)  # an archive is never changed
    probe = NodeLock(config.node.state_dir)
    holder = probe.acquire()
    probe.release()
    node = Node(config, watch=False, deliver=holder is None and not enqueue_only)
    node.install_signals()
    job_ids = _enqueue_tree(node, tree, list(scan(tree)), on_enqueue)
    if on_enqueued:
        on_enqueued(len(job_ids), holder)
    result = IngestResult(job_ids)
    finished = ("done", "failed", "quarantined", "cancelled")

    def count() -> int:
        done = sum(node.journal.get(i).state in finished for i in job_ids)
        if on_deliver:
            on_deliver(done, len(job_ids))
        return done

    if enqueue_only or node.stopping.is_set():
        node.shutdown()
        return result
    if holder is not None:  # the running node delivers; we watch the journal
        try:
            while not node.stopping.is_set() and count() < len(job_ids):
                node.stopping.wait(poll_seconds)
        finally:
            node.shutdown()
    else:
        node.run(until=lambda: count() == len(job_ids))
    result.states = _states_of(node.config, job_ids)
    return result


def _enqueue_tree(node, tree, files: list[Path],
                  on_enqueue: Callable[[int, int], None] | None) -> list[int]:
    """Enqueue each file of the tree (until the node is asked to stop); the jobs' ids."""
    job_ids: list[int] = []
    for i, path in enumerate(files, 1):
        if node.stopping.is_set():
            break
        job = node.enqueue_file(path, tree)
        if job is not None:
            job_ids.append(job.id)
        if on_enqueue:
            on_enqueue(i, len(files))
    return job_ids


def _states_of(config, job_ids: list[int]) -> dict[str, int]:
    """How many of these jobs are in each state, as the journal has them now."""
    journal = config.open_journal(create=False)
    try:
        states = [journal.get(i).state.value for i in job_ids]
    finally:
        journal.close()
    return {s: states.count(s) for s in sorted(set(states))}
