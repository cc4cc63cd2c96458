"""Sessions, CSRF tokens, the secret key and the request-size limit of the console.

A session is a signed cookie (``itsdangerous``, HMAC-SHA1 over a timestamped payload) holding the user
name, the session's CSRF token and the user's session generation at login
(:meth:`safety.accounts.Accounts.session_generation`: revoking a user's sessions makes it stale, and the
console refuses the cookie); it is HttpOnly and SameSite=Strict. The signing key is made on first
start and kept beside the database with mode 0600; deleting it logs everyone out.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SESSION_COOKIE = "layerloop_session"
SECRET_BYTES = 32
CSRF_FIELD = "csrf_token"


class ConsoleError(RuntimeError):
    """The console cannot start as configured (bad secret file, missing database folder)."""


def secret_path(db: str | Path) -> Path:
    """Where the session secret of a database lives: ``<db>.secret``."""
    db = Path(db)
    return db.with_name(db.name + ".secret")


def load_or_create_secret(db: str | Path) -> bytes:
    """The session signing key beside ``db``; made (mode 0600) on first use, refused if others can read it."""
    path = secret_path(db)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        fd = None
    if fd is not None:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_hex(SECRET_BYTES).encode())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConsoleError(f"{path}: mode {mode:o} lets others read the session secret; run `chmod 600 {path}`")
    key = path.read_bytes().strip()
    if len(key) < 2 * SECRET_BYTES:
        raise ConsoleError(f"{path}: secret too short ({len(key)} characters); delete it to make a new one")
    return key


@dataclass(frozen=True)
class Session:
    """What the cookie says: who is logged in (``None`` before login), the CSRF token, and the user's
    session generation when the session was made."""

    user: str | None
    csrf: str
    generation: int = -1


class Sessions:
    """Signs and reads session cookies."""

    def __init__(self, secret: bytes, max_age_s: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="layerloop-console-session")
        self.max_age_s = max_age_s

    def new(self, user: str | None, generation: int = -1) -> tuple[Session, str]:
        """A fresh session (new CSRF token) and its cookie value."""
        session = Session(user, secrets.token_urlsafe(32), generation)
        return session, self._serializer.dumps({"user": user, "csrf": session.csrf, "gen": generation})

    def read(self, cookie: str | None) -> Session | None:
        """The session in a cookie, or ``None`` if there is none, it was forged or it expired."""
        if not cookie:
            return None
        try:
            data: Any = self._serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("csrf"), str):
            return None
        user = data.get("user")
        generation = data.get("gen")
        # A cookie from before generations existed reads as -1, which no user has: it must log in again.
        return Session(user if isinstance(user, str) else None, data["csrf"],
                       generation if isinstance(generation, int) else -1)


def csrf_ok(session: Session | None, token: object) -> bool:
    """Whether a submitted form's token is the session's (compared in constant time)."""
    return (session is not None and isinstance(token, str) and bool(token)
            and hmac.compare_digest(session.csrf.encode(), token.encode()))


class BodyTooLarge(Exception):
    """A request body over the limit."""


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413, counting as they stream in.

    A declared ``Content-Length`` over the limit is refused before any body is read; a chunked or
    understated body is cut off as soon as the count passes the limit, so nothing larger is ever held.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        over = False
        replied = False

        async def counted_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app answers once the body ran over (a form parser turns the error into a 400),
            # the client gets the 413 that says why.
            nonlocal replied
            if over:
                if not replied:
                    replied = True
                    await self._refuse(send)
                return
            replied |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if not replied:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        mib = self.max_bytes / (1024 * 1024)
        body = (f"413 Request Entity Too Large: uploads are limited to {mib:.4g} MiB "
                f"({self.max_bytes} bytes) in all.\n").encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
