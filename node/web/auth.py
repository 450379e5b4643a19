"""Who may use the console, and the rules that keep a browser from acting for someone else.

Three modes (``[console] auth``):

* ``none``: no login, every visitor is an operator. Only on a loopback address: anyone who can
  reach 127.0.0.1 can already run the CLI on this machine.
* ``token``: a bearer token from the environment (never the config file): the operators'
  token (``operator_token_env``) may act, the viewers' (``viewer_token_env``) only look.
  Browsers log in once on /login and keep it in an HttpOnly, SameSite=Strict cookie.
* ``proxy``: a reverse proxy (oauth2-proxy, an OIDC-aware nginx, ...) authenticates and passes
  the user and the role in headers. Bind to loopback behind it: the headers are believed.

Every action (POST) from a browser carries a CSRF token: the double-submit cookie ``dn_csrf``
must be repeated in the form field ``csrf`` or the ``X-CSRF-Token`` header. A script that sends
``Authorization: Bearer`` is not a browser riding on ambient cookies and needs none.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass

ROLES = ("viewer", "operator")
TOKEN_COOKIE = "dn_token"
CSRF_COOKIE = "dn_csrf"
#: A token shorter than this is refused at start: it could be guessed.
MIN_TOKEN_LENGTH = 16


class ConsoleStartError(Exception):
    """The console refuses to start as configured (a public bind without auth, ...)."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # viewer | operator
    bearer: bool = False  # authenticated by an Authorization header (a script)

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Gate:
    """The console's authentication, checked once at start."""

    mode: str
    operator_token: str | None = None
    viewer_token: str | None = None
    user_header: str = "X-Forwarded-User"
    role_header: str = "X-Forwarded-Role"

    @classmethod
    def from_settings(cls, settings) -> Gate:
        mode = settings.auth
        if mode == "none" and not is_loopback(settings.host):
            raise ConsoleStartError(
                f"[console] host {settings.host!r} is not a loopback address and auth = "
                '"none": anyone on the network could act. Set auth = "token" (with '
                f"${settings.operator_token_env}) or auth = \"proxy\", or bind 127.0.0.1")
        operator = viewer = None
        if mode == "token":
            operator = os.environ.get(settings.operator_token_env) or None
            viewer = os.environ.get(settings.viewer_token_env) or None
            if not operator and not viewer:
                raise ConsoleStartError(
                    f'[console] auth = "token" but neither ${settings.operator_token_env} nor '
                    f"${settings.viewer_token_env} is set: export the token(s) first")
            for name, token in ((settings.operator_token_env, operator),
                                (settings.viewer_token_env, viewer)):
                if token and len(token) < MIN_TOKEN_LENGTH:
                    raise ConsoleStartError(f"${name} is shorter than {MIN_TOKEN_LENGTH} "
                                            "characters: use a long random token")
        return cls(mode, operator, viewer, settings.proxy_user_header, settings.proxy_role_header)

    def principal(self, headers, cookies) -> Principal | None:
        """Who sends this request, or None (not logged in)."""
        if self.mode == "none":
            return Principal("local", "operator")
        if self.mode == "proxy":
            user = (headers.get(self.user_header) or "").strip()
            if not user:
                return None
            role = (headers.get(self.role_header) or "viewer").strip().lower()
            return Principal(user[:100], role if role in ROLES else "viewer")
        auth = headers.get("authorization") or ""
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        token = bearer or cookies.get(TOKEN_COOKIE)
        if not token:
            return None
        if self.operator_token and hmac.compare_digest(token, self.operator_token):
            return Principal("operator", "operator", bearer is not None)
        if self.viewer_token and hmac.compare_digest(token, self.viewer_token):
            return Principal("viewer", "viewer", bearer is not None)
        return None


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def csrf_ok(cookie: str | None, sent: str | None) -> bool:
    return bool(cookie) and bool(sent) and hmac.compare_digest(cookie, sent)
