"""Intake: what a complete file in a watched folder (or an archive tree) is, before it becomes
a job. Anything in an inbox is untrusted, so this is where a hostile folder is met:

- only regular files are ever opened: a FIFO, a device or a socket would block or read for ever;
- a symbolic link is taken only when its real path is inside the watched folder (unless the
  watch says ``follow_symlinks = true``): otherwise anyone who can write to the inbox could
  make the node send any file its user can read;
- the first bytes must be what the name says (a NIfTI header, gzip, DICOM's "DICM") and the
  size within the limit, checked before a single byte is hashed: a 40 GB sparse file named
  ``.dcm`` is quarantined in a millisecond, not after minutes of hashing;
- identification and hashing run in one thread beside the node's loop (:class:`Intake`), so a
  slow disk or a large file never stalls health, echoes or the rest of intake.

The job key (:func:`job_key`) covers everything that shapes the output: the content (file and
sidecar), the file-name entities the profile uses, the profile itself and the destination.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from node.convert.profile import Profile
from node.convert.source import (
    MAX_DATA_BYTES,
    bids_entities,
    content_digest,
    is_nifti,
    sidecar_of,
)
from node.errors import InputError
from node.service.routing import Chosen, Route, route

log = logging.getLogger("node.service")

#: The largest input file taken: a NIfTI's voxel cap plus its header, and the same for DICOM.
MAX_INPUT_BYTES = MAX_DATA_BYTES + 1024**2
_FIELD = re.compile(r"\{(\w+)\}")


class Refused(Exception):
    """A file that will not become a job; ``quarantine``: move it aside with the reason
    (False: leave it where it is, with one warning)."""

    def __init__(self, reason: str, quarantine: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quarantine = quarantine


def inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def regular_file(path: Path, root: Path, follow_symlinks: bool) -> os.stat_result:
    """The file's status when it may be opened at all; Refused (left in place) when not."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise Refused(f"cannot read ({exc.strerror})", quarantine=False) from None
    if stat.S_ISLNK(st.st_mode):
        real = Path(os.path.realpath(path))
        if not follow_symlinks and not inside(real, Path(os.path.realpath(root))):
            raise Refused(f"a symbolic link to {real}, outside the watched folder (set "
                          "follow_symlinks = true on the watch to take such links)",
                          quarantine=False)
        try:
            st = os.stat(path)
        except OSError as exc:
            raise Refused(f"a broken symbolic link ({exc.strerror})", quarantine=False) from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise Refused(f"{kind}, not a regular file: never opened", quarantine=False)
    return st


def check_magic(path: Path, size: int) -> None:
    """The first bytes must be what the name promises; Refused (quarantined) otherwise."""
    if size > MAX_INPUT_BYTES:
        raise Refused(f"{size} bytes, over the {MAX_INPUT_BYTES} bytes an input may have",
                      quarantine=True)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a regular file by now; never blocks
    try:
        head = os.read(fd, 348)
    finally:
        os.close(fd)
    name = path.name.lower()
    if name.endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            raise Refused("named .gz but not gzip data", quarantine=True)
    elif is_nifti(path):
        sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
        if len(head) < 348 or not sizes & {348, 540}:
            raise Refused("not a NIfTI file (no NIfTI-1 or NIfTI-2 header)", quarantine=True)
    elif head[128:132] != b"DICM":
        raise Refused("not a DICOM Part 10 file (no DICM marker at byte 128)", quarantine=True)


#: Conversion holds about this many times a volume's voxel bytes at its peak (the data read,
#: the stored integers and a float working copy for scaling); measured ~2.3x on float32 4D.
MEMORY_FACTOR = 3


def declared_voxel_bytes(path: Path) -> int:
    """The voxel bytes a NIfTI header declares (0 when it is not NIfTI or cannot be read):
    read from the first 540 bytes only, decompressed if gzip, so a sparse file or a gzip bomb
    is sized before anything is loaded."""
    import gzip
    import struct

    if not is_nifti(path):
        return 0
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as f:
            head = f.read(540)
    except Exception:  # not gzip after all, truncated, corrupt: the converter will say why
        return 0
    for order in "<>":
        if len(head) >= 348 and struct.unpack_from(f"{order}i", head)[0] == 348:
            dims = struct.unpack_from(f"{order}8h", head, 40)
            bitpix = struct.unpack_from(f"{order}h", head, 72)[0]
            break
        if len(head) >= 540 and struct.unpack_from(f"{order}i", head)[0] == 540:
            dims = struct.unpack_from(f"{order}8q", head, 16)
            bitpix = struct.unpack_from(f"{order}h", head, 14)[0]
            break
    else:
        return 0
    n = max(0, min(int(dims[0]), 7))
    count = 1
    for d in dims[1: n + 1]:
        count *= max(int(d), 1)
    return count * max(int(bitpix), 8) // 8


def profile_digest(profile: Profile) -> str:
    return hashlib.sha256(repr(profile).encode()).hexdigest()[:16]


def job_key(path: Path, content: str, profile: Profile, destination: str,
            form: str | None = None) -> str:
    """What makes two inputs the same job: the content, the file-name entities the profile's
    templates use (a relabelled scan is another patient), the profile, the destination and
    the form a route gives its copy there (none: the key of a release before routing)."""
    used = sorted({f for t in (*profile.filename.values(), *profile.fallback.values())
                   for f in _FIELD.findall(str(t))})
    entities = bids_entities(path)
    named = "\0".join(f"{k}={entities.get(k, '')}" for k in used)
    if "stem" in used or "name" in used:
        named += f"\0file={path.name}"
    text = "\0".join([content, named, profile.name, profile_digest(profile), destination]
                     + ([form] if form else []))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Identified:
    """A complete file, identified: ready to enqueue, or refused with a reason."""

    path: Path
    watch: object  # settings.WatchSettings
    sidecar_missing: bool
    sidecar: Path | None = None
    size: int = 0
    digest: str = ""
    key: str = ""
    refused: Refused | None = None
    memory: int = 0  # estimated peak bytes to convert it
    #: its jobs: where it goes (routing.Chosen) and each one's job key
    jobs: tuple[tuple[Chosen, str], ...] = ()
    priority: int = 0


def identify(path: Path, watch, profile: Profile, sidecar_missing: bool = False,
             memory_limit: int = 0, routes: tuple[Route, ...] = (),
             profile_of: Callable[[str], Profile] | None = None) -> Identified:
    """Everything intake needs to know about one complete file; never raises for the file.

    ``memory_limit``: a file whose conversion would need more (its header's voxel bytes times
    :data:`MEMORY_FACTOR`) is quarantined with the reason, never loaded. ``routes``: where
    it goes ([[route]]; none: the watch's destination), ``profile_of`` the profiles routes
    name."""
    try:
        st = regular_file(path, watch.path, getattr(watch, "follow_symlinks", False))
        check_magic(path, st.st_size)
        memory = declared_voxel_bytes(path) * MEMORY_FACTOR
        if memory_limit and memory > memory_limit:
            raise Refused(f"converting it needs about {memory / 1024**3:.1f} GiB (its header "
                          f"declares {memory // MEMORY_FACTOR} bytes of voxels), over the "
                          f"node's memory_limit of {memory_limit / 1024**3:.1f} GiB",
                          quarantine=True)
        sidecar = sidecar_of(path)
        if sidecar is not None:
            try:
                if not stat.S_ISREG(os.stat(sidecar).st_mode) or (
                        os.stat(sidecar).st_size > 16 * 1024**2):
                    raise Refused(f"its sidecar {sidecar.name} is not a regular file of at "
                                  "most 16 MB", quarantine=True)
            except FileNotFoundError:
                sidecar = None
        digest = content_digest(path, sidecar)
        decision = route(routes, path, watch, profile.iod, sidecar)
        if decision.refused:
            raise Refused(decision.refused, quarantine=True)
    except InputError as exc:  # a sidecar routing had to read
        return Identified(path, watch, sidecar_missing,
                          refused=Refused(exc.message, quarantine=True))
    except Refused as exc:
        return Identified(path, watch, sidecar_missing, refused=exc)
    except OSError as exc:
        return Identified(path, watch, sidecar_missing,
                          refused=Refused(f"cannot read ({exc.strerror})", quarantine=False))
    jobs = tuple((chosen, job_key(path, digest, _profile(chosen.profile, profile, profile_of),
                                  chosen.destination, chosen.form_text))
                 for chosen in decision.chosen)
    return Identified(path, watch, sidecar_missing, sidecar, st.st_size, digest, jobs[0][1],
                      memory=memory, jobs=jobs, priority=decision.priority)


def _profile(name: str, default: Profile, profile_of) -> Profile:
    return default if profile_of is None or name == default.name else profile_of(name)


class Intake:
    """Identifies and hashes files in one background thread; the node's loop only submits
    and collects, so it keeps serving health and the queue whatever a file is."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="intake")
        self._futures: dict[Path, Future] = {}
        self._args: dict[Path, tuple] = {}

    def submit(self, path: Path, watch, profile: Profile, sidecar_missing: bool,
               memory_limit: int = 0, routes: tuple[Route, ...] = (),
               profile_of: Callable[[str], Profile] | None = None) -> None:
        if path not in self._futures:
            self._args[path] = (watch, profile, sidecar_missing)
            self._futures[path] = self._pool.submit(identify, path, watch, profile,
                                                    sidecar_missing, memory_limit, routes,
                                                    profile_of)

    def done(self) -> list[Identified]:
        out = []
        for path, future in list(self._futures.items()):
            if future.done():
                del self._futures[path]
                try:
                    out.append(future.result())
                except Exception as exc:  # a bug in intake must not stop the node
                    log.exception("%s: intake failed", path)
                    watch, _profile, missing = self._args.pop(path, (None, None, False))
                    out.append(Identified(path, watch, missing, refused=Refused(
                        f"internal error while identifying it ({exc})", quarantine=False)))
                    continue
                self._args.pop(path, None)
        return out

    def busy(self) -> int:
        return len(self._futures)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
