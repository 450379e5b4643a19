"""Node configuration (TOML) and metadata mapping profiles.

Lookup order: ``--config`` > ``$DICOM_NODE_CONFIG`` > the project's ``config/node.toml`` (the
folder ``scripts/install`` set up, never the current folder) > built-in
defaults. The built-in profiles (``node/convert/profiles.toml``) are always there; a config file's
``[profiles.NAME]`` tables are merged over them key by key, and a profile may ``extends`` another.
Every problem is a :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from node.convert.profile import (
    COMPRESSIONS,
    DEFAULT_PROFILE,
    IODS,
    Profile,
    builtin_profiles_raw,
    check_results,
    check_table,
    merge_tables,
    profiles_from_raw,
)
from node.errors import ConfigError
from node.net.destination import Destination, TlsSettings, WebAuth, check_ae_title
from node.net.notify import TlsFiles
from node.service.events import KINDS as RECEIVER_KINDS
from node.service.events import Receiver
from node.service.routing import Route, parse_routes
from node.service.schedule import DeliveryPolicy, check_zone, parse_schedule

log = logging.getLogger("node.settings")

ENV_CONFIG = "DICOM_NODE_CONFIG"
#: Written by scripts/install into the virtual environment: the project folder it set up.
PROJECT_MARKER = "dicom-node-project"
_UID_ROOT = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")

_DEST_KEYS = {
    "host", "port", "ae_title", "calling_ae_title", "max_pdu", "connect_timeout",
    "acse_timeout", "dimse_timeout", "network_timeout", "max_associations",
    "transfer_syntaxes", "tls", "query_destination", "iod", "compression", "labelmap",
    "commitment", "commitment_timeout", "verify",
}
#: A destination's delivery policy (node.service.schedule): read by the node, not the network.
_POLICY_KEYS = {"schedule", "concurrency"}
_TLS_KEYS = {"ca", "cert", "key", "key_password_env", "verify_hostname", "verify"}
#: A DICOMweb destination's keys (url instead of host, port and AE titles; no DIMSE timeouts).
_WEB_KEYS = {
    "url", "auth", "batch_bytes", "batch_instances", "connect_timeout", "network_timeout",
    "max_associations", "tls", "query_destination", "iod", "compression", "labelmap", "verify",
    "max_instances_per_second", "max_bytes_per_second", "results", *_POLICY_KEYS,
}
_DIMSE_ONLY = sorted(_DEST_KEYS - _WEB_KEYS)
_AUTH_KEYS = {"kind", "username", "password_env", "token_env", "token_url", "client_id",
              "client_secret_env", "scope"}
#: What each kind of login needs, besides its kind.
_AUTH_NEEDS = {"none": (), "basic": ("username", "password_env"), "bearer": ("token_env",),
               "oauth2": ("token_url", "client_id", "client_secret_env")}
_DEST_KEYS |= _WEB_KEYS


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] = ()) -> Any:
    """One config key, written once: its default, bounds, choices and help. The loader
    (:func:`read_table`), the environment overrides and ``check-config`` all read these."""
    return field(default=default, metadata={"help": help, "minimum": minimum,
                                            "maximum": maximum, "choices": choices})


@dataclass(frozen=True)
class NodeSettings:
    """[node]"""

    ae_title: str = setting("DICOM_NODE", "our calling AE title")
    uid_root: str = setting("2.25", "root of every UID we make (or an organisation's, at most "
                            "40 characters)")
    default_profile: str = setting(DEFAULT_PROFILE, "profile when none is named")
    default_destination: str | None = setting(None, "destination when none is named")
    state_dir: Path = setting(Path("var"), "journal, spool, quarantine and done folders "
                              "(relative to the project folder)")
    retry_base_seconds: float = setting(5.0, "first retry delay; doubles per attempt, with "
                                        "jitter", minimum=0)
    retry_max_seconds: float = setting(600.0, "longest retry delay", minimum=0)
    max_attempts: int = setting(50, "attempts before a job fails", minimum=1)
    workers: int = setting(4, "conversion and delivery processes (mostly waiting on the PACS, "
                           "so more than cores)", minimum=1, maximum=64)
    log_format: str = setting("plain", "log lines as text or JSON", choices=("plain", "json"))
    metrics_port: int = setting(0, "/healthz and /metrics port; 0 = off", minimum=0,
                                maximum=65535)
    journal: str = setting("", "the journal: empty for state_dir/journal.sqlite (one machine), "
                           "or postgresql://user@host:5432/dbname shared by several nodes "
                           "(password from $PGPASSWORD or ~/.pgpass)")
    auto_migrate: bool = setting(True, "a node starting on a journal made by an older release "
                                 "brings its schema up to date; false: it refuses to start "
                                 "until `dicom-node journal migrate` has run")
    node_id: str = setting("", "this node's name in a shared journal (default: the host name); "
                           "unique among live nodes")
    path_map: tuple[str, ...] = setting((), "a shared journal's paths as this node mounts "
                                        'them: ["/mnt/archive=/data/archive"] (journal '
                                        "prefix = local prefix)")
    node_gone_seconds: float = setting(120.0, "a node silent this long is flagged as gone",
                                       minimum=1)
    previews: bool = setting(True, "make each job's QA picture (three planes, DICOM beside "
                             "NIfTI) at conversion time, for the console")
    metrics_host: str = setting("127.0.0.1", "address /healthz and /metrics listen on "
                                "(0.0.0.0 in a container, for Prometheus)")
    echo_interval_seconds: float = setting(60.0, "how often destinations are C-ECHOed",
                                           minimum=1)
    rescan_seconds: float = setting(30.0, "how often watched folders are rescanned",
                                    minimum=0.1)
    shutdown_seconds: float = setting(30.0, "on SIGTERM, how long in-flight jobs may finish",
                                      minimum=0)
    lease_seconds: float = setting(60.0, "how long a claimed job stays with a node that "
                                   "stops renewing it (then another process resumes it)",
                                   minimum=5)
    min_free_bytes: int = setting(256 * 1024**2, "below this free space on the state folder "
                                  "the node pauses intake and sending (degraded)", minimum=0)
    memory_limit: int = setting(0, "bytes all conversions together may use; a file that needs "
                                "more is quarantined, a job waits while others use it "
                                "(0: half the machine's memory)", minimum=0)
    commitment_port: int = setting(0, "port of our storage commitment SCP, where an archive "
                                   "sends its N-EVENT-REPORT on an association of its own "
                                   "(our AE title is ae_title); 0: reports only on the "
                                   "request's association", minimum=0, maximum=65535)
    commitment_host: str = setting("127.0.0.1", "address that SCP listens on (0.0.0.0 for an "
                                   "archive on another machine)")
    commitment_tls_cert: str = setting("", "that SCP's certificate (PEM): it then takes only "
                                       "TLS associations (PS3.15 B.1)")
    commitment_tls_key: str = setting("", "the certificate's private key (PEM)")
    commitment_tls_ca: str = setting("", "CA that archives' client certificates must be "
                                     "signed by (empty: no client certificate asked)")
    timezone: str = setting("", "time zone of destination schedules (an IANA name like "
                            '"Europe/Berlin"; empty: the system\'s)')


@dataclass(frozen=True)
class WatchSettings:
    """[[watch]]: one watched folder."""

    path: Path = setting(Path("."), "the folder to watch (required)")
    destination: str = setting("", "destination (default: [node].default_destination)")
    profile: str = setting("", "mapping profile (default: [node].default_profile)")
    recursive: bool = setting(True, "watch sub-folders too")
    settle_seconds: float = setting(2.0, "a file is complete when unchanged this long",
                                    minimum=0)
    patterns: tuple[str, ...] = setting(("*.nii", "*.nii.gz", "*.dcm"),
                                        "names taken (DICOM is sent as it is)")
    ignore_patterns: tuple[str, ...] = setting((), "names never taken")
    polling: bool = setting(False, "poll instead of inotify (network file systems)")
    after: str = setting("move", "what happens to a delivered file",
                         choices=("move", "delete", "keep"))
    require_sidecar: bool = setting(False, "a NIfTI needs its BIDS sidecar")
    sidecar_grace_seconds: float = setting(30.0, "how long a NIfTI waits for its sidecar",
                                           minimum=0)
    sidecars: str = setting("auto", "wait for sidecars: auto (when the folder's other images "
                            "have them), expected, optional",
                            choices=("auto", "expected", "optional"))
    follow_symlinks: bool = setting(False, "take symbolic links that point outside the "
                                    "watched folder")
    priority: str = setting("normal", "urgent: its jobs are claimed before any other and sent "
                            "even while a destination's schedule is closed",
                            choices=("normal", "urgent"))


@dataclass(frozen=True)
class ConsoleSettings:
    """[console]: the web console (in `dicom-node watch`, or alone: `dicom-node console`)."""

    enabled: bool = setting(False, "serve the console inside `dicom-node watch`")
    host: str = setting("127.0.0.1", "address to bind; another than loopback needs auth")
    port: int = setting(8080, "TCP port", minimum=1, maximum=65535)
    auth: str = setting("none", "none (loopback only), token (tokens from the environment) or "
                        "proxy (a reverse proxy's user and role headers)",
                        choices=("none", "token", "proxy"))
    operator_token_env: str = setting("DICOM_NODE_CONSOLE_OPERATOR_TOKEN",
                                      "environment variable holding the operators' token")
    viewer_token_env: str = setting("DICOM_NODE_CONSOLE_VIEWER_TOKEN",
                                    "environment variable holding the viewers' token")
    proxy_user_header: str = setting("X-Forwarded-User", "auth = proxy: the user's name")
    proxy_role_header: str = setting("X-Forwarded-Role", "auth = proxy: operator or viewer")
    show_phi: bool = setting(False, "reserved: the console keeps and shows no patient names or "
                             "birth dates (paths, UIDs and states only)")


def _keys(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def read_table(cls, where: str, raw: Any, skip: set[str] = frozenset()) -> dict[str, Any]:
    """The keys of ``raw`` checked against ``cls``'s settings: unknown keys, types, bounds and
    choices are a ValueError naming the table and the key. Returns what ``raw`` sets."""
    import typing

    check_table(where, raw, _keys(cls))
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in raw or f.name in skip:
            continue
        out[f.name] = _checked(f"{where}.{f.name}", raw[f.name], hints[f.name], f.metadata)
    return out


def _checked(where: str, value: Any, kind: Any, meta: Any) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: write true or false")
        return value
    if kind in (int, float):
        value = _number(where, value, integer=kind is int, minimum=meta.get("minimum") or 0)
        if meta.get("maximum") is not None and value > meta["maximum"]:
            raise ValueError(f"{where}: at most {meta['maximum']}")
        return value
    if kind == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f'{where}: a list of glob patterns like "*.nii.gz"')
        return tuple(value)
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: write a folder path")
        return Path(value)
    if not isinstance(value, str) or not value:  # str, str | None
        raise ValueError(f"{where}: write a text value")
    if meta.get("choices") and value not in meta["choices"]:
        options = " or ".join(f'"{c}"' for c in meta["choices"])
        raise ValueError(f"{where}: write {options}, not {value!r}")
    return value


_NODE_KEYS = _keys(NodeSettings)
_WATCH_KEYS = _keys(WatchSettings)


@dataclass(frozen=True)
class Config:
    node: NodeSettings
    profiles: dict[str, Profile]
    path: Path | None = None
    destinations: dict[str, Destination] = field(default_factory=dict)
    watches: tuple[WatchSettings, ...] = ()
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    routes: tuple[Route, ...] = ()  # [[route]]: empty = each watch's own destination
    policies: dict[str, DeliveryPolicy] = field(default_factory=dict)
    receivers: tuple[Receiver, ...] = ()  # [[webhook]], [[email]], [[audit]]: who hears events

    def policy(self, name: str) -> DeliveryPolicy:
        """A destination's delivery policy (schedule, jobs at once); the default when none."""
        return self.policies.get(name) or DeliveryPolicy()

    def local_path(self, path: str | Path) -> Path:
        """A path recorded in the journal as this node reaches it ([node].path_map: shared
        storage mounted at another path here)."""
        text = str(path)
        for rule in self.node.path_map:
            shared, _, local = rule.partition("=")
            shared = shared.rstrip("/")
            if text == shared or text.startswith(shared + "/"):
                return Path(local.rstrip("/") + text[len(shared):])
        return Path(text)

    @property
    def journal_location(self) -> str | Path:
        """A postgresql:// URL, or the SQLite file in the state folder."""
        return self.node.journal or self.node.state_dir / "journal.sqlite"

    def open_journal(self, create: bool = True, schema=None):
        """The node's journal, whichever backend ([node].journal). ``create``: make it and
        bring its schema up to date (a node at start, a command that enqueues); else only use
        a current one (a console request, a read-only command, a worker). ``schema``: see
        node.service.journal.store.Store._open_schema."""
        from node.service.journal import open_journal_at

        return open_journal_at(self.journal_location, create=create, schema=schema)

    def open_journal_at_start(self):
        """The journal as a node opens it at start: brought up to date when
        [node].auto_migrate allows, else made when new and refused when behind."""
        return self.open_journal(schema="migrate" if self.node.auto_migrate else "new")

    def commitment_tls(self) -> tuple[str, str, str] | None:
        """The storage commitment SCP's (certificate, key, CA) files, relative ones from the
        config's folder; None without a certificate (no TLS)."""
        n = self.node
        if not n.commitment_tls_cert:
            return None
        base = self.path.parent if self.path else Path.cwd()

        def where(name: str) -> str:
            return str(base / name) if name and not Path(name).is_absolute() else name

        return (where(n.commitment_tls_cert), where(n.commitment_tls_key),
                where(n.commitment_tls_ca))

    def watch_for(self, path: str | Path) -> WatchSettings | None:
        """The watched folder a file is in (the deepest, should folders nest), or None."""
        real = Path(os.path.abspath(path))
        found = [w for w in self.watches if real.is_relative_to(os.path.abspath(w.path))]
        return max(found, key=lambda w: len(w.path.parts)) if found else None

    def query_destination(self, dest: Destination) -> Destination:
        """Where the studies a series joins are looked up for ``dest``: its
        ``query_destination``, else itself (PACS usually answer C-FIND where they store)."""
        return self.destinations[dest.query_destination] if dest.query_destination else dest

    def destination(self, name: str | None = None) -> Destination:
        """The named destination, or ``[node].default_destination``."""
        key = name or self.node.default_destination
        if key is None:
            if len(self.destinations) == 1:
                return next(iter(self.destinations.values()))
            raise ConfigError(
                self.path,
                "no destination named and no [node].default_destination: name one, or give "
                "--host/--port/--aet",
            )
        try:
            return self.destinations[key]
        except KeyError:
            known = ", ".join(sorted(self.destinations)) or "none configured"
            raise ConfigError(self.path, f"no destination {key!r} (known: {known})") from None

    def profile(self, name: str | None = None) -> Profile:
        """The named profile; ``None`` or ``"default"`` gives ``[node].default_profile``."""
        key = self.node.default_profile if name in (None, "", "default") else name
        try:
            return self.profiles[key]
        except KeyError:
            known = ", ".join(sorted(self.profiles))
            raise ConfigError(self.path, f"no profile {key!r} (known: {known})") from None


def project_config_path() -> Path | None:
    """``config/node.toml`` of the project folder that ``scripts/install`` set up for this
    Python environment, if there is one. Never the current folder: a received dataset that
    ships its own ``config/node.toml`` must not decide where data goes."""
    marker = Path(sys.prefix) / PROJECT_MARKER
    try:
        project = Path(marker.read_text(encoding="utf-8").strip())
    except OSError:
        return None
    candidate = project / "config" / "node.toml"
    return candidate if candidate.is_file() else None


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """``--config`` > ``$DICOM_NODE_CONFIG`` > the project's config/node.toml > None
    (built-in defaults)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    return project_config_path()


ENV_PREFIX = "DICOM_NODE_"
_ENV_NOT_OVERRIDES = {"DICOM_NODE_CONFIG", "DICOM_NODE_VENV", "DICOM_NODE_PSEUDONYM_SECRET"}


def _env_value(text: str) -> Any:
    """A TOML value if the text is one (42, 1.5, true, ["a"]), else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_env_overrides(user: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Overrides for containers: ``DICOM_NODE_NODE_<KEY>`` sets ``[node].<key>``;
    ``DICOM_NODE_DESTINATIONS_<NAME>_<KEY>`` sets ``[destinations.<name>].<key>`` (the
    destination is created if the config has none of that name; ``-`` in names is ``_``).
    Values are read as TOML values when they parse as one (``4242``, ``true``), else as text.
    """
    env = dict(os.environ if env is None else env)
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in user.items()}
    for var, text in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or var in _ENV_NOT_OVERRIDES:
            continue
        rest = var[len(ENV_PREFIX):]
        if rest.startswith("NODE_"):
            key = rest[len("NODE_"):].lower()
            if key not in _NODE_KEYS:
                raise ConfigError(None, f"environment {var}: [node] has no key {key!r}")
            out.setdefault("node", {})[key] = _env_value(text)
        elif rest.startswith("DESTINATIONS_"):
            tail = rest[len("DESTINATIONS_"):]
            key = next((k for k in sorted(_DEST_KEYS, key=len, reverse=True)
                        if tail.endswith("_" + k.upper())), None)
            if key is None or tail == "_" + key.upper():
                raise ConfigError(None, f"environment {var}: write DICOM_NODE_DESTINATIONS_"
                                  f"<NAME>_<KEY> with KEY one of {', '.join(sorted(_DEST_KEYS))}")
            wanted = tail[: -len(key) - 1]
            dests = out.setdefault("destinations", {})
            dests = out["destinations"] = {k: dict(v) for k, v in dests.items()}
            name = next((n for n in dests if n.upper().replace("-", "_") == wanted),
                        wanted.lower())
            dests.setdefault(name, {})[key] = _env_value(text)
        else:  # not ours: Kubernetes makes DICOM_NODE_PORT=tcp://... for a Service
            log.debug("environment %s: not a DICOM_NODE_NODE_<KEY> or "
                      "DICOM_NODE_DESTINATIONS_<NAME>_<KEY> override; ignored", var)
    return out


def load_config(explicit: str | Path | None = None, *, profiles: bool = True) -> Config:
    """Load and validate the configuration found by :func:`find_config_path`, with the
    environment's ``DICOM_NODE_*`` overrides applied.

    ``profiles=False`` leaves the mapping profiles unread: the read-only console commands need
    only the node's settings, and validating profiles loads pydicom's data dictionary.
    """
    path = find_config_path(explicit)
    user: dict[str, Any] = {}
    if path is not None:
        try:
            user = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(path, "config file does not exist") from None
        except OSError as exc:
            raise ConfigError(path, f"cannot read config ({exc.strerror})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, f"invalid TOML: {exc}") from None
    return config_from_dict(apply_env_overrides(user), path, profiles=profiles)


def config_from_dict(
    user: dict[str, Any], path: Path | None = None, *, profiles: bool = True
) -> Config:
    """Validate a parsed config (merged over the built-in profiles)."""
    raw = merge_tables(builtin_profiles_raw(), user)
    here = path.resolve().parent if path is not None else Path.cwd()
    base = here.parent if here.name == "config" else here
    with _config_error(path):
        node = _node_from(raw.get("node", {}), base)
        built = profiles_from_raw(raw.get("profiles", {})) if profiles else None
        if built is not None and node.default_profile not in built:
            raise ValueError(f"[node].default_profile {node.default_profile!r} is not a "
                             "profile")
        destinations = _destinations_from(raw.get("destinations", {}), node,
                                          path.parent if path else None)
        console = ConsoleSettings(**read_table(ConsoleSettings, "[console]",
                                               raw.get("console", {})))
        watches_raw = raw.get("watch", [])
        if not isinstance(watches_raw, list):
            raise ValueError("watch folders are [[watch]] tables (an array of tables)")
        routed = bool(raw.get("route"))
        watches = [_watch_settings(i, wraw, base, node, built, destinations, routed)
                   for i, wraw in enumerate(watches_raw)]
        routes = parse_routes(raw.get("route", []), destinations, built,
                              tuple(w.path for w in watches))
        if routes:
            named = next((i for i, w in enumerate(watches_raw) if "destination" in w), None)
            if named is not None:
                raise ValueError(
                    f"[[watch]] #{named + 1}: destination does not apply when [[route]] tables "
                    "decide where files go; remove it, and route this folder's files with a "
                    f'route (when = {{ watch = "{watches[named].path.name}" }})')
        policies = _policies(raw.get("destinations", {}), node)
        receivers = _receivers(raw, path.parent if path else Path.cwd())
    return Config(node=node, profiles=built or {}, path=path, destinations=destinations,
                  watches=tuple(watches), console=console, routes=routes, policies=policies,
                  receivers=receivers)


#: The keys each kind of receiver takes (README "Events").
_RECEIVER_KEYS = {
    "webhook": {"url", "secret_env", "tls"},
    "email": {"host", "port", "security", "username", "password_env", "from", "to",
              "every_minutes", "tls"},
    "audit": {"host", "port", "transport", "site", "tls"},
}
_RECEIVER_COMMON = {"name", "events", "phi", "max_pending", "max_age_hours", "timeout_seconds",
                    "retry_max_seconds"}


def _receivers(raw: dict, base: Path) -> tuple[Receiver, ...]:
    out: list[Receiver] = []
    for kind in RECEIVER_KINDS:
        tables = raw.get(kind, [])
        if isinstance(tables, dict):
            tables = [tables]
        if not isinstance(tables, list):
            raise ValueError(f"[[{kind}]]: write receivers as [[{kind}]] tables")
        out.extend(_receiver(kind, i, t, base) for i, t in enumerate(tables))
    keys = [r.key for r in out]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"[[{key.split(':')[0]}]] {key.split(':')[1]!r}: two receivers "
                             "have this name; name them apart")
    return tuple(out)


def _receiver(kind: str, i: int, raw: Any, base: Path) -> Receiver:
    where = f"[[{kind}]] #{i + 1}"
    check_table(where, raw, _RECEIVER_KEYS[kind] | _RECEIVER_COMMON)
    name = raw.get("name", f"{kind}{i + 1}")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,64}", name):
        raise ValueError(f"{where}.name: letters, digits, '.', '-' or '_' (at most 64)")
    where = f"[[{kind}]] {name!r}"
    values: dict[str, Any] = {"kind": kind, "name": name}
    events = raw.get("events", [])
    if not isinstance(events, list) or not all(isinstance(e, str) and e for e in events):
        raise ValueError(f'{where}.events: a list of event types or globs, e.g. ["job.done", '
                         '"destination.*"]')
    values["events"] = tuple(events)
    values["phi"] = _checked(f"{where}.phi", raw.get("phi", False), bool, {})
    for key, minimum in (("max_pending", 1), ("max_age_hours", 0.01), ("timeout_seconds", 0.1),
                         ("retry_max_seconds", 0.1)):
        if key in raw:
            values[key] = _number(f"{where}.{key}", raw[key], integer=key == "max_pending",
                                  minimum=minimum)
    if "tls" in raw:
        t = _tls_settings(where, raw["tls"], base)
        values["tls"] = TlsFiles(t.ca, t.cert, t.key)
    values.update(_RECEIVER_PARTS[kind](where, raw))
    return Receiver(**values)


def _webhook_keys(where: str, raw: dict) -> dict[str, Any]:
    url, _, _ = _web_url(f"{where}.url", raw.get("url"))
    secret = raw.get("secret_env")
    if not isinstance(secret, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", secret):
        raise ValueError(f"{where}.secret_env: the name of the environment variable that holds "
                         "the signing secret (every webhook is signed, HMAC-SHA256)")
    return {"url": url, "secret_env": secret}


def _endpoint(where: str, raw: dict, default_port: int) -> dict[str, Any]:
    host = raw.get("host")
    if not isinstance(host, str) or not host:
        raise ValueError(f"{where}.host: the collector's host name or address")
    port = _number(f"{where}.port", raw.get("port", default_port), integer=True, minimum=1)
    if port > 65535:
        raise ValueError(f"{where}.port: {port} is not a TCP port (1-65535)")
    return {"host": host, "port": port}


def _email_keys(where: str, raw: dict) -> dict[str, Any]:
    security = _choice(f"{where}.security", raw.get("security", "starttls"),
                       ("starttls", "tls", "none")) or "starttls"
    out = _endpoint(where, raw, 465 if security == "tls" else 587)
    to = raw.get("to")
    if isinstance(to, str):
        to = [to]
    if not isinstance(to, list) or not to or not all(isinstance(a, str) and "@" in a
                                                     for a in to):
        raise ValueError(f'{where}.to: the addresses, e.g. ["pacs-team@example.org"]')
    sender = raw.get("from")
    if not isinstance(sender, str) or "@" not in sender:
        raise ValueError(f'{where}.from: the sender address, e.g. "dicom-node@example.org"')
    if security == "none" and out["host"] not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f'{where}.security: "none" sends the login and the mail in clear; '
                         'only to a relay on this machine (host = "127.0.0.1")')
    if raw.get("username") and not raw.get("password_env"):
        raise ValueError(f"{where}.password_env: the environment variable holding the "
                         "password of username (never the password itself)")
    every = _number(f"{where}.every_minutes", raw.get("every_minutes", 15.0), minimum=0)
    return {**out, "security": security, "to": tuple(to), "sender": sender,
            "username": str(raw.get("username", "")),
            "password_env": str(raw.get("password_env", "")), "every_minutes": every}


def _audit_keys(where: str, raw: dict) -> dict[str, Any]:
    transport = _choice(f"{where}.transport", raw.get("transport", "tls"),
                        ("tls", "udp")) or "tls"
    out = _endpoint(where, raw, 6514 if transport == "tls" else 514)
    site = raw.get("site", "")
    if not isinstance(site, str):
        raise ValueError(f"{where}.site: the AuditEnterpriseSiteID, as text")
    return {**out, "transport": transport, "site": site}


_RECEIVER_PARTS = {"webhook": _webhook_keys, "email": _email_keys, "audit": _audit_keys}


def _policies(raw: dict, node: NodeSettings) -> dict[str, DeliveryPolicy]:
    """Each destination's schedule and jobs at once ([destinations.NAME] schedule,
    concurrency). A rate cap without a concurrency sends one job at a time, so the cap holds
    for the destination as a whole on this node."""
    out = {}
    for name, draw in raw.items():
        where = f"[destinations.{name}]"
        schedule = (parse_schedule(f"{where}.schedule", draw["schedule"], node.timezone)
                    if "schedule" in draw else DeliveryPolicy().schedule)
        paced = any(draw.get(k) for k in ("max_instances_per_second", "max_bytes_per_second"))
        concurrency = _number(f"{where}.concurrency", draw.get("concurrency", 1 if paced else 0),
                              integer=True)
        out[name] = DeliveryPolicy(schedule, concurrency)
    return out


@contextmanager
def _config_error(path: Path | None) -> Iterator[None]:
    """A ValueError from a check becomes the ConfigError that names the config file."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None


def _node_from(node_raw: Any, base: Path) -> NodeSettings:
    """``[node]``, validated: known keys, its settings, the AE title and the UID root."""
    if not isinstance(node_raw, dict):
        raise ValueError("[node] must be a table")
    unknown = set(node_raw) - _NODE_KEYS
    if unknown:
        raise ValueError(f"[node]: unknown key(s) {', '.join(sorted(unknown))}")
    node = _node_settings(node_raw, base)
    check_ae_title("[node].ae_title", node.ae_title)
    if not _UID_ROOT.match(node.uid_root) or len(node.uid_root) > 40:
        raise ValueError(
            f"[node].uid_root {node.uid_root!r}: digits and dots, no leading zeros, at most "
            '40 characters (leave room for the generated part); "2.25" needs no registration')
    return node


def _destinations_from(raw: Any, node: NodeSettings, base: Path | None
                       ) -> dict[str, Destination]:
    """``[destinations.NAME]`` tables, each validated, and the names others refer to."""
    if not isinstance(raw, dict):
        raise ValueError("[destinations] must hold tables like [destinations.pacs]")
    destinations = {name: build_destination(name, draw, base=base)
                    for name, draw in raw.items()}
    for dest in destinations.values():
        if dest.query_destination is not None and dest.query_destination not in destinations:
            raise ValueError(f"[destinations.{dest.name}].query_destination "
                             f"{dest.query_destination!r} is not a destination")
    if node.default_destination is not None and node.default_destination not in destinations:
        raise ValueError(
            f"[node].default_destination {node.default_destination!r} is not a destination")
    return destinations


def _node_settings(raw: dict[str, Any], base: Path) -> NodeSettings:
    values = read_table(NodeSettings, "[node]", raw)
    for rule in values.get("path_map", ()):
        shared, sep, local = rule.partition("=")
        if not sep or not shared.startswith("/") or not local.startswith("/"):
            raise ValueError(f'[node].path_map: {rule!r}: write "/shared/prefix=/local/prefix" '
                             "(absolute paths)")
    node = NodeSettings(**values)
    check_zone("[node].timezone", node.timezone)
    state_dir = node.state_dir if node.state_dir.is_absolute() else base / node.state_dir
    return dataclasses.replace(node, state_dir=state_dir)


def _watch_settings(
    i: int, raw: Any, base: Path, node: NodeSettings, profiles: dict | None,
    destinations: dict, routed: bool = False,
) -> WatchSettings:
    where = f"[[watch]] #{i + 1}"
    check_table(where, raw, _WATCH_KEYS)
    if not isinstance(raw.get("path"), str) or not raw["path"]:
        raise ValueError(f"{where}: path is required (the folder to watch)")
    values = read_table(WatchSettings, where, raw, skip={"destination", "profile"})
    folder = values.pop("path")
    folder = folder if folder.is_absolute() else base / folder
    destination = raw.get("destination", node.default_destination)
    if destination is None and len(destinations) == 1:
        destination = next(iter(destinations))  # the only one, as for the console commands
    if destination is None and routed:
        destination = ""  # [[route]] tables decide
    elif destination is None:
        known = ", ".join(sorted(destinations)) or "none configured"
        raise ValueError(f"{where}: no destination: set destination = \"NAME\" here or "
                         f"[node].default_destination (known: {known})")
    if destination not in destinations and not (routed and destination == ""):
        known = ", ".join(sorted(destinations)) or "none configured"
        raise ValueError(f"{where}: destination {destination!r} is not a [destinations.NAME] "
                         f"(known: {known})")
    profile = raw.get("profile", node.default_profile)
    if profiles is not None and profile not in profiles:
        raise ValueError(f"{where}: profile {profile!r} is not a profile")
    if not values.get("patterns", True):
        values.pop("patterns")  # an empty list means the defaults
    return WatchSettings(path=folder, destination=destination, profile=profile, **values)


def _number(where: str, value: Any, *, integer: bool = False, minimum: float = 0) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise ValueError(f"{where}: write a {'whole ' if integer else ''}number >= {minimum}")
    return value


def _max_pdu(where: str, value: Any) -> int:
    """0 ("no limit", PS3.8 D.1) or 4 KB to 16 MB: the buffer a peer may fill per PDU."""
    value = _number(f"{where}.max_pdu", value, integer=True)
    if value and not 4096 <= value <= 16 * 1024**2:
        raise ValueError(f"{where}.max_pdu: {value} is outside 4096..16777216 (or 0)")
    return value


def _tls_settings(where: str, traw: Any, base: Path | None) -> TlsSettings:
    """``[destinations.NAME.tls]``; relative file paths are relative to the config."""
    if not isinstance(traw, dict) or set(traw) - _TLS_KEYS:
        raise ValueError(f"{where}.tls: a table with keys {', '.join(sorted(_TLS_KEYS))}")

    def file(key: str) -> Path | None:
        if traw.get(key) in (None, ""):
            return None
        p = Path(traw[key])
        return p if p.is_absolute() or base is None else base / p

    if bool(traw.get("cert")) != bool(traw.get("key")):
        raise ValueError(f"{where}.tls: give both cert and key for a client certificate")
    password_env = traw.get("key_password_env")
    if password_env is not None and (not isinstance(password_env, str) or not password_env):
        raise ValueError(f"{where}.tls.key_password_env: the name of an environment variable")
    return TlsSettings(
        ca=file("ca"), cert=file("cert"), key=file("key"), key_password_env=password_env,
        verify_hostname=bool(traw.get("verify_hostname", True)),
        verify=bool(traw.get("verify", True)),
    )


def _web_url(where: str, value: Any) -> tuple[str, str, int]:
    """A DICOMweb base URL: http(s), a host, no credentials, query or fragment; the URL
    without a trailing slash, its host and port."""
    from urllib.parse import urlsplit

    fix = 'write it as url = "https://host:port/dicom-web"'
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}.url: {fix}")
    try:
        parts = urlsplit(value.strip())
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ValueError(f"{where}.url: {value!r} is not a URL ({exc}); {fix}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}.url: {value!r} is not an http(s) URL with a host; {fix}")
    if parts.username or parts.password:
        raise ValueError(f"{where}.url: no user name or password in the URL (it is logged); "
                         "use the auth table with password_env")
    if parts.query or parts.fragment or any(c.isspace() for c in value.strip()):
        raise ValueError(f"{where}.url: {value!r} has a query, fragment or space; {fix}")
    return value.strip().rstrip("/"), parts.hostname, port


def _web_auth(where: str, raw: Any) -> WebAuth:
    """``[destinations.NAME.auth]``: the kind of login and where its secret is (the name of
    an environment variable: a secret never sits in the config file)."""
    if raw is None:
        return WebAuth()
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.auth: a table, e.g. auth = {{ kind = \"basic\", "
                         "username = \"node\", password_env = \"PACS_PASSWORD\" }")
    for key in ("password", "token", "client_secret", "secret"):
        if key in raw:
            raise ValueError(f"{where}.auth.{key}: a secret is never written in the config: "
                             f"put it in an environment variable and name it with "
                             f"{key if key != 'secret' else 'client_secret'}_env")
    check_table(f"{where}.auth", raw, _AUTH_KEYS)
    kind = raw.get("kind", "none")
    if kind not in _AUTH_NEEDS:
        raise ValueError(f"{where}.auth.kind: write one of {', '.join(_AUTH_NEEDS)}, not "
                         f"{kind!r}")
    for key in _AUTH_NEEDS[kind]:
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ValueError(f"{where}.auth.{key}: kind = \"{kind}\" needs it" + (
                " (the name of the environment variable that holds the secret)"
                if key.endswith("_env") else ""))
    if kind == "oauth2":
        _web_url(f"{where}.auth.token_url", raw["token_url"])
    return WebAuth(kind=kind, **{k: raw[k].strip() for k in _AUTH_KEYS - {"kind"}
                                 if isinstance(raw.get(k), str) and raw[k].strip()})


def _build_web_destination(name: str, raw: dict, base: Path | None) -> Destination:
    where = f"[destinations.{name}]"
    dimse = [k for k in _DIMSE_ONLY if k in raw]
    if dimse:
        raise ValueError(f"{where}: {', '.join(dimse)} do not apply to a DICOMweb destination "
                         "(url); remove them, or remove url for a DIMSE destination")
    url, host, port = _web_url(where, raw["url"])
    return Destination(
        name=name, host=host, port=port, ae_title="", url=url,
        auth=_web_auth(where, raw.get("auth")),
        batch_bytes=_number(f"{where}.batch_bytes",
                            raw.get("batch_bytes", Destination.batch_bytes),
                            integer=True, minimum=1024),
        batch_instances=_number(f"{where}.batch_instances",
                                raw.get("batch_instances", Destination.batch_instances),
                                integer=True, minimum=1),
        **_shared_fields(where, raw, base),
    )


def _shared_fields(where: str, raw: dict, base: Path | None) -> dict[str, Any]:
    """The keys a DIMSE and a DICOMweb destination have alike, validated."""
    return dict(
        connect_timeout=_number(f"{where}.connect_timeout", raw.get("connect_timeout", 10.0)),
        network_timeout=_number(f"{where}.network_timeout", raw.get("network_timeout", 60.0)),
        max_associations=_number(
            f"{where}.max_associations", raw.get("max_associations", 2), integer=True, minimum=1
        ),
        tls=_tls_settings(where, raw["tls"], base) if "tls" in raw else None,
        query_destination=_query_destination(where, raw.get("query_destination")),
        iod=_choice(f"{where}.iod", raw.get("iod"), IODS),
        compression=_choice(f"{where}.compression", raw.get("compression", "none"),
                            COMPRESSIONS) or "none",
        labelmap=_checked(f"{where}.labelmap", raw.get("labelmap", False), bool, {}),
        results=check_results(f"{where}.results", raw.get("results", [])),
        verify=_checked(f"{where}.verify", raw.get("verify", False), bool, {}),
        max_instances_per_second=_number(f"{where}.max_instances_per_second",
                                         raw.get("max_instances_per_second", 0)),
        max_bytes_per_second=_number(f"{where}.max_bytes_per_second",
                                     raw.get("max_bytes_per_second", 0)),
    )


def build_destination(name: str, raw: Any, base: Path | None = None) -> Destination:
    """Validate ``[destinations.NAME]``; relative TLS file paths are relative to the config.
    With ``url`` it is a DICOMweb destination, else a DIMSE one (host, port, ae_title)."""
    where = f"[destinations.{name}]"
    check_table(where, raw, _DEST_KEYS)
    if "url" in raw:
        return _build_web_destination(name, raw, base)
    for key in ("auth", "batch_bytes", "batch_instances"):
        if key in raw:
            raise ValueError(f"{where}.{key}: applies to a DICOMweb destination only (one "
                             "with url)")
    for key in ("host", "port", "ae_title"):
        if key not in raw:
            raise ValueError(f"{where}: missing {key} (host, port and ae_title are required; "
                             "or url for a DICOMweb destination)")
    if not isinstance(raw["host"], str) or not raw["host"]:
        raise ValueError(f"{where}.host: write a host name or address")
    port = _number(f"{where}.port", raw["port"], integer=True, minimum=1)
    if port > 65535:
        raise ValueError(f"{where}.port: {port} is not a TCP port (1-65535)")
    syntaxes = raw.get("transfer_syntaxes", [])
    if not isinstance(syntaxes, list) or not all(
        isinstance(s, str) and _UID_ROOT.match(s) for s in syntaxes
    ):
        raise ValueError(f"{where}.transfer_syntaxes: a list of transfer syntax UIDs")
    return Destination(
        name=name,
        host=raw["host"],
        port=port,
        ae_title=check_ae_title(f"{where}.ae_title", raw["ae_title"]),
        calling_ae_title=(
            check_ae_title(f"{where}.calling_ae_title", raw["calling_ae_title"])
            if "calling_ae_title" in raw else None
        ),
        max_pdu=_max_pdu(where, raw.get("max_pdu", Destination.max_pdu)),
        acse_timeout=_number(f"{where}.acse_timeout", raw.get("acse_timeout", 30.0)),
        dimse_timeout=_number(f"{where}.dimse_timeout", raw.get("dimse_timeout", 60.0)),
        transfer_syntaxes=tuple(syntaxes),
        **_shared_fields(where, raw, base),
        commitment=_checked(f"{where}.commitment", raw.get("commitment", False), bool, {}),
        commitment_timeout=_number(f"{where}.commitment_timeout",
                                   raw.get("commitment_timeout", 60.0), minimum=0.1),
    )


def _choice(where: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if value is not None and value not in choices:
        raise ValueError(f"{where}: write one of {', '.join(choices)}, not {value!r}")
    return value


def _query_destination(where: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{where}.query_destination: the name of another destination")
    return value



def check_environment(config: Config) -> list[str]:
    """What the file system and environment say about a valid config: problems, each one line
    naming the key and what to do. The node refuses to start while there are any."""
    where = str(config.path) if config.path else "built-in defaults"
    problems: list[str] = []
    state = config.node.state_dir
    try:
        state.mkdir(parents=True, exist_ok=True)
        probe = state / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        problems.append(f"{where}: [node].state_dir {state}: not writable ({exc.strerror}); "
                        "choose a folder this user can write")
    for i, watch in enumerate(config.watches):
        if not watch.path.is_dir():
            problems.append(f"{where}: [[watch]] #{i + 1} path {watch.path}: no such folder; "
                            f"create it (mkdir -p {watch.path}) or fix the path")
        elif watch.after in ("move", "delete") and not os.access(watch.path, os.W_OK | os.X_OK):
            problems.append(f"{where}: [[watch]] #{i + 1} after = \"{watch.after}\" but this "
                            f"user cannot change {watch.path}: make it writable, or set "
                            "after = \"keep\"")
        profile = config.profiles[watch.profile]
        if profile.deidentify and not profile.secret() and not profile.pseudonyms:
            problems.append(
                f"{where}: [[watch]] #{i + 1} uses profile {profile.name!r}, which "
                f"de-identifies: set {profile.pseudonym_secret_env or 'pseudonym_secret'}")
    for key, f in zip(("commitment_tls_cert", "commitment_tls_key", "commitment_tls_ca"),
                      config.commitment_tls() or (), strict=False):
        if f and not Path(f).is_file():
            problems.append(f"{where}: [node].{key} {f}: no such file")
    for name, dest in config.destinations.items():
        if dest.tls is not None:
            for label, f in (("ca", dest.tls.ca), ("cert", dest.tls.cert), ("key", dest.tls.key)):
                if f is not None and not f.is_file():
                    problems.append(f"{where}: [destinations.{name}].tls.{label} {f}: "
                                    "no such file")
            problems += _key_password_problems(where, name, dest.tls)
        for key, env in dest.auth.secret_envs:
            if not os.environ.get(env or ""):
                problems.append(f"{where}: [destinations.{name}].auth.{key}: the environment "
                                f"variable {env} is not set; export it with the secret")
    return problems + _receiver_problems(where, config)


def _receiver_problems(where: str, config: Config) -> list[str]:
    """Secrets from the environment and TLS files of [[webhook]], [[email]], [[audit]]."""
    problems = []
    for r in config.receivers:
        table = f"[[{r.kind}]] {r.name!r}"
        for key in ("secret_env", "password_env"):
            env = getattr(r, key)
            if env and not os.environ.get(env):
                problems.append(f"{where}: {table}.{key}: the environment variable {env} is "
                                "not set; export it with the secret")
        if r.tls is not None:
            for label in ("ca", "cert", "key"):
                f = getattr(r.tls, label)
                if f is not None and not f.is_file():
                    problems.append(f"{where}: {table}.tls.{label} {f}: no such file")
    return problems


def _key_password_problems(where: str, name: str, tls) -> list[str]:
    """An encrypted client key needs its passphrase from the environment: OpenSSL would
    otherwise prompt on a terminal, or hang without one."""
    key = tls.key
    if key is None or not key.is_file():
        return []
    try:
        head = key.read_bytes()[:4096]
    except OSError as exc:
        return [f"{where}: [destinations.{name}].tls.key {key}: cannot read ({exc.strerror})"]
    if b"ENCRYPTED" not in head:
        return []
    env = tls.key_password_env
    if env is None:
        return [f"{where}: [destinations.{name}].tls.key {key} is encrypted: set "
                "tls.key_password_env = \"NAME\" and put the passphrase in that environment "
                "variable"]
    if not os.environ.get(env):
        return [f"{where}: [destinations.{name}].tls.key_password_env: the environment "
                f"variable {env} is not set"]
    return []


def describe(config: Config) -> str:
    """The resolved settings as TOML-like text, secrets masked."""
    lines = [f"# config: {config.path or 'built-in defaults'}", "[node]"]
    for f in fields(NodeSettings):
        lines.append(f"{f.name} = {_show(getattr(config.node, f.name))}")
    for name, d in config.destinations.items():
        lines.append(f"\n[destinations.{name}]")
        skip = ({"name", "host", "port", "ae_title", *_DIMSE_ONLY} if d.web
                else {"name", "url", "auth", "batch_bytes", "batch_instances"})
        for f in fields(Destination):
            if f.name in skip:
                continue
            value = getattr(d, f.name)
            if f.name == "auth":  # names of environment variables only, never a secret
                value = {k.name: getattr(value, k.name) for k in fields(value)
                         if getattr(value, k.name) is not None}
            if f.name == "tls" and value is not None:
                value = {k.name: getattr(value, k.name) for k in fields(value)}
                value["key"] = "****" if value["key"] else None
            lines.append(f"{f.name} = {_show(value)}")
        policy = config.policy(name)
        if not policy.schedule.always:
            lines.append(f"schedule = {_show([w.text for w in policy.schedule.windows])}")
        if policy.concurrency:
            lines.append(f"concurrency = {policy.concurrency}")
    for w in config.watches:
        lines.append("\n[[watch]]")
        for f in fields(WatchSettings):
            lines.append(f"{f.name} = {_show(getattr(w, f.name))}")
    for r in config.receivers:  # names of environment variables only, never a secret
        lines.append(f"\n[[{r.kind}]]  # {r.name}")
        shown = {"webhook": ("url", "secret_env"), "audit": ("host", "port", "transport", "site"),
                 "email": ("host", "port", "security", "username", "password_env", "sender",
                           "to", "every_minutes")}[r.kind]
        for key in (*shown, "events", "phi", "max_pending", "max_age_hours"):
            value = getattr(r, key)
            lines.append(f"{key} = " + ("(the default)" if key == "events" and not value
                                        else _show(value)))
    for route in config.routes:
        lines.append(f"\n[[route]]  # {route.name}")
        lines.append("when = " + (", ".join(t.describe() for t in route.tests) or "every file"))
        lines.append("to = " + ", ".join(
            t.destination + (f" {t.form()}" if t.form() else "") for t in route.targets)
            + (" (continue)" if route.cont else "") + (" (urgent)" if route.priority else ""))
    for name, p in config.profiles.items():
        secret = "****" if p.secret() else "(not set)"
        lines.append(f"\n[profiles.{name}]  # modality {p.modality}, derived {p.derived}, "
                     f"deidentify {p.deidentify}" + (f", key {secret}" if p.deidentify else ""))
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(none)"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    return str(value)
