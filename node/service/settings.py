"""Node configuration (TOML) and metadata mapping profiles.

Lookup order: ``--config`` > ``$DICOM_NODE_CONFIG`` > ``./config/node.toml`` > built-in
defaults. The built-in profiles (``node/convert/profiles.toml``) are always there; a config file's
``[profiles.NAME]`` tables are merged over them key by key, and a profile may ``extends`` another.
Every problem is a :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from node.convert.profile import (
    DEFAULT_PROFILE,
    Profile,
    builtin_profiles_raw,
    check_table,
    merge_tables,
    profiles_from_raw,
)
from node.errors import ConfigError
from node.net.destination import Destination, TlsSettings, check_ae_title

ENV_CONFIG = "DICOM_NODE_CONFIG"
DEFAULT_CONFIG_PATH = Path("config/node.toml")
_UID_ROOT = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))*$")

_NODE_KEYS = {"ae_title", "uid_root", "default_profile", "default_destination", "state_dir",
              "retry_base_seconds", "retry_max_seconds", "max_attempts", "workers",
              "log_format", "metrics_port", "echo_interval_seconds", "rescan_seconds",
              "shutdown_seconds"}
_WATCH_KEYS = {"path", "destination", "profile", "recursive", "settle_seconds", "patterns",
               "ignore_patterns", "polling", "after", "require_sidecar", "sidecar_grace_seconds"}
_DEST_KEYS = {
    "host", "port", "ae_title", "calling_ae_title", "max_pdu", "connect_timeout",
    "acse_timeout", "dimse_timeout", "network_timeout", "max_associations",
    "transfer_syntaxes", "tls",
}
_TLS_KEYS = {"ca", "cert", "key", "key_password_env", "verify_hostname", "verify"}


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str = "DICOM_NODE"
    uid_root: str = "2.25"
    default_profile: str = DEFAULT_PROFILE
    default_destination: str | None = None
    state_dir: Path = Path("var")  # journal, spool, quarantine, done
    retry_base_seconds: float = 5.0  # first retry delay; doubles per attempt, with jitter
    retry_max_seconds: float = 600.0
    max_attempts: int = 50
    workers: int = 4  # conversion+delivery processes (mostly waiting on the PACS: > cores)
    log_format: str = "plain"  # or "json"
    metrics_port: int = 0  # /healthz and /metrics on 127.0.0.1; 0 = off
    echo_interval_seconds: float = 60.0
    rescan_seconds: float = 30.0
    shutdown_seconds: float = 30.0  # SIGTERM: how long in-flight jobs may finish


@dataclass(frozen=True)
class WatchSettings:
    """One watched folder ([[watch]])."""

    path: Path
    destination: str
    profile: str
    recursive: bool = True
    settle_seconds: float = 2.0
    patterns: tuple[str, ...] = ("*.nii", "*.nii.gz", "*.dcm")  # DICOM is sent as it is
    ignore_patterns: tuple[str, ...] = ()
    polling: bool = False
    after: str = "move"
    require_sidecar: bool = False
    sidecar_grace_seconds: float = 30.0


@dataclass(frozen=True)
class Config:
    node: NodeSettings
    profiles: dict[str, Profile]
    path: Path | None = None
    destinations: dict[str, Destination] = field(default_factory=dict)
    watches: tuple[WatchSettings, ...] = ()

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


def find_config_path(explicit: str | Path | None = None) -> Path | None:
    """``--config`` > ``$DICOM_NODE_CONFIG`` > ``./config/node.toml`` > None (built-ins)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_CONFIG):
        return Path(os.environ[ENV_CONFIG])
    if DEFAULT_CONFIG_PATH.is_file():
        return DEFAULT_CONFIG_PATH
    return None


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
        else:
            raise ConfigError(None, f"environment {var}: only DICOM_NODE_NODE_<KEY> and "
                              "DICOM_NODE_DESTINATIONS_<NAME>_<KEY> override the config")
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
    node_raw = raw.get("node", {})
    if not isinstance(node_raw, dict):
        raise ConfigError(path, "[node] must be a table")
    unknown = set(node_raw) - _NODE_KEYS
    if unknown:
        raise ConfigError(path, f"[node]: unknown key(s) {', '.join(sorted(unknown))}")
    here = path.resolve().parent if path is not None else Path.cwd()
    base = here.parent if here.name == "config" else here
    try:
        node = _node_settings(node_raw, base)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    try:
        check_ae_title("[node].ae_title", node.ae_title)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    if not _UID_ROOT.match(node.uid_root) or len(node.uid_root) > 40:
        raise ConfigError(
            path,
            f"[node].uid_root {node.uid_root!r}: digits and dots, no leading zeros, at most "
            '40 characters (leave room for the generated part); "2.25" needs no registration',
        )
    try:
        built = profiles_from_raw(raw.get("profiles", {})) if profiles else None
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    if built is not None and node.default_profile not in built:
        raise ConfigError(path, f"[node].default_profile {node.default_profile!r} is not a profile")
    destinations_raw = raw.get("destinations", {})
    if not isinstance(destinations_raw, dict):
        raise ConfigError(path, "[destinations] must hold tables like [destinations.pacs]")
    destinations: dict[str, Destination] = {}
    for name, draw in destinations_raw.items():
        try:
            destinations[name] = build_destination(name, draw, base=path.parent if path else None)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    if node.default_destination is not None and node.default_destination not in destinations:
        raise ConfigError(
            path, f"[node].default_destination {node.default_destination!r} is not a destination"
        )
    watches_raw = raw.get("watch", [])
    if not isinstance(watches_raw, list):
        raise ConfigError(path, "watch folders are [[watch]] tables (an array of tables)")
    watches = []
    for i, wraw in enumerate(watches_raw):
        try:
            watches.append(_watch_settings(i, wraw, base, node, built, destinations))
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    return Config(node=node, profiles=built or {}, path=path, destinations=destinations,
                  watches=tuple(watches))


def _node_settings(raw: dict[str, Any], base: Path) -> NodeSettings:
    d = NodeSettings()
    log_format = raw.get("log_format", d.log_format)
    if log_format not in ("plain", "json"):
        raise ValueError(f'[node].log_format: write "plain" or "json", not {log_format!r}')
    state_dir = Path(raw.get("state_dir", str(d.state_dir)))
    return NodeSettings(
        ae_title=str(raw.get("ae_title", d.ae_title)),
        uid_root=str(raw.get("uid_root", d.uid_root)),
        default_profile=str(raw.get("default_profile", d.default_profile)),
        default_destination=raw.get("default_destination"),
        state_dir=state_dir if state_dir.is_absolute() else base / state_dir,
        retry_base_seconds=_number("[node].retry_base_seconds",
                                   raw.get("retry_base_seconds", d.retry_base_seconds)),
        retry_max_seconds=_number("[node].retry_max_seconds",
                                  raw.get("retry_max_seconds", d.retry_max_seconds)),
        max_attempts=_number("[node].max_attempts", raw.get("max_attempts", d.max_attempts),
                             integer=True, minimum=1),
        workers=_number("[node].workers", raw.get("workers", d.workers), integer=True, minimum=1),
        log_format=log_format,
        metrics_port=_number("[node].metrics_port", raw.get("metrics_port", d.metrics_port),
                             integer=True),
        echo_interval_seconds=_number("[node].echo_interval_seconds",
                                      raw.get("echo_interval_seconds", d.echo_interval_seconds)),
        rescan_seconds=_number("[node].rescan_seconds",
                               raw.get("rescan_seconds", d.rescan_seconds), minimum=0.1),
        shutdown_seconds=_number("[node].shutdown_seconds",
                                 raw.get("shutdown_seconds", d.shutdown_seconds)),
    )


def _watch_settings(
    i: int, raw: Any, base: Path, node: NodeSettings, profiles: dict | None,
    destinations: dict,
) -> WatchSettings:
    where = f"[[watch]] #{i + 1}"
    check_table(where, raw, _WATCH_KEYS)
    if not isinstance(raw.get("path"), str) or not raw["path"]:
        raise ValueError(f"{where}: path is required (the folder to watch)")
    folder = Path(raw["path"])
    folder = folder if folder.is_absolute() else base / folder
    destination = raw.get("destination", node.default_destination)
    if destination is None and len(destinations) == 1:
        destination = next(iter(destinations))  # the only one, as for the console commands
    if destination is None:
        known = ", ".join(sorted(destinations)) or "none configured"
        raise ValueError(f"{where}: no destination: set destination = \"NAME\" here or "
                         f"[node].default_destination (known: {known})")
    if destination not in destinations:
        known = ", ".join(sorted(destinations)) or "none configured"
        raise ValueError(f"{where}: destination {destination!r} is not a [destinations.NAME] "
                         f"(known: {known})")
    profile = raw.get("profile", node.default_profile)
    if profiles is not None and profile not in profiles:
        raise ValueError(f"{where}: profile {profile!r} is not a profile")
    after = raw.get("after", "move")
    if after not in ("move", "delete", "keep"):
        raise ValueError(f'{where}.after: write "move", "delete" or "keep", not {after!r}')
    for key in ("patterns", "ignore_patterns"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}.{key}: a list of glob patterns like \"*.nii.gz\"")
    return WatchSettings(
        path=folder,
        destination=destination,
        profile=profile,
        recursive=bool(raw.get("recursive", True)),
        settle_seconds=_number(f"{where}.settle_seconds", raw.get("settle_seconds", 2.0)),
        patterns=tuple(raw.get("patterns") or WatchSettings.patterns),
        ignore_patterns=tuple(raw.get("ignore_patterns") or ()),
        polling=bool(raw.get("polling", False)),
        after=after,
        require_sidecar=bool(raw.get("require_sidecar", False)),
        sidecar_grace_seconds=_number(f"{where}.sidecar_grace_seconds",
                                      raw.get("sidecar_grace_seconds", 30.0)),
    )


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


def build_destination(name: str, raw: Any, base: Path | None = None) -> Destination:
    """Validate ``[destinations.NAME]``; relative TLS file paths are relative to the config."""
    where = f"[destinations.{name}]"
    check_table(where, raw, _DEST_KEYS)
    for key in ("host", "port", "ae_title"):
        if key not in raw:
            raise ValueError(f"{where}: missing {key} (host, port and ae_title are required)")
    if not isinstance(raw["host"], str) or not raw["host"]:
        raise ValueError(f"{where}.host: write a host name or address")
    port = _number(f"{where}.port", raw["port"], integer=True, minimum=1)
    if port > 65535:
        raise ValueError(f"{where}.port: {port} is not a TCP port (1-65535)")
    tls = None
    if "tls" in raw:
        traw = raw["tls"]
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
        tls = TlsSettings(
            ca=file("ca"), cert=file("cert"), key=file("key"), key_password_env=password_env,
            verify_hostname=bool(traw.get("verify_hostname", True)),
            verify=bool(traw.get("verify", True)),
        )
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
        connect_timeout=_number(f"{where}.connect_timeout", raw.get("connect_timeout", 10.0)),
        acse_timeout=_number(f"{where}.acse_timeout", raw.get("acse_timeout", 30.0)),
        dimse_timeout=_number(f"{where}.dimse_timeout", raw.get("dimse_timeout", 60.0)),
        network_timeout=_number(f"{where}.network_timeout", raw.get("network_timeout", 60.0)),
        max_associations=_number(
            f"{where}.max_associations", raw.get("max_associations", 2), integer=True, minimum=1
        ),
        transfer_syntaxes=tuple(syntaxes),
        tls=tls,
    )



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
        profile = config.profiles[watch.profile]
        if profile.deidentify and not profile.secret() and not profile.pseudonyms:
            problems.append(
                f"{where}: [[watch]] #{i + 1} uses profile {profile.name!r}, which "
                f"de-identifies: set {profile.pseudonym_secret_env or 'pseudonym_secret'}")
    for name, dest in config.destinations.items():
        if dest.tls is not None:
            for label, f in (("ca", dest.tls.ca), ("cert", dest.tls.cert), ("key", dest.tls.key)):
                if f is not None and not f.is_file():
                    problems.append(f"{where}: [destinations.{name}].tls.{label} {f}: "
                                    "no such file")
            problems += _key_password_problems(where, name, dest.tls)
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
        for f in fields(Destination):
            if f.name in ("name",):
                continue
            value = getattr(d, f.name)
            if f.name == "tls" and value is not None:
                value = {k.name: getattr(value, k.name) for k in fields(value)}
                value["key"] = "****" if value["key"] else None
            lines.append(f"{f.name} = {_show(value)}")
    for w in config.watches:
        lines.append("\n[[watch]]")
        for f in fields(WatchSettings):
            lines.append(f"{f.name} = {_show(getattr(w, f.name))}")
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
