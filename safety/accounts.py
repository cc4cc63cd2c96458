"""Console users: names, passwords hashed with scrypt and a per-user salt, roles, login checks, and the
revocation of their sessions.

The users live in the ``users`` table of the approvals database (:mod:`safety.database`); the approvals
store records a decision only by a user who exists here, and the console signs in only a user whose
password :meth:`Accounts.check_password` accepts.

Roles (:data:`ROLES`): a ``reviewer`` approves or rejects programs, an ``operator`` acts on deployments
(confirms a first layer, pauses, resumes, aborts, stops). They are the ``roles`` column of ``users``, added
to an older database on first open; a user made before roles existed gets both, which is what every user
could do then.

A session cookie carries the user's *session generation*: the number of rows for that user in the
append-only ``session_revocations`` table when it was issued. :meth:`Accounts.revoke_sessions` appends a
row, so every cookie issued before it names an old generation and is refused on its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from safety.database import StoreError, append_only, connect, open_database

SCRYPT_N = 2**14
"""scrypt cost (CPU/memory); 16 MiB and about 50 ms per check: slow for a guesser, quick for a login."""
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MAXMEM_BYTES = 64 * 1024 * 1024
SCRYPT_KEY_BYTES = 32
SALT_BYTES = 16
KDF = f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}"
"""The key-derivation function and its parameters, stored with each hash (a changed cost fails safe)."""
MIN_PASSWORD_CHARS = 8
USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
REVIEWER = "reviewer"
"""May approve or reject programs."""
OPERATOR = "operator"
"""May act on deployments: confirm a first layer, pause, resume, abort, emergency stop."""
ROLES = (REVIEWER, OPERATOR)
LEGACY_ROLES = f"{OPERATOR} {REVIEWER}"
"""What a user made before roles existed holds: both (the ``roles`` column's default)."""

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    kdf TEXT NOT NULL,
    salt BLOB NOT NULL,
    password_hash BLOB NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS session_revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL REFERENCES users (name),
    time_utc TEXT NOT NULL,
    revoked_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS session_revocations_name ON session_revocations (name);
""" + append_only("session_revocations")
ROLES_COLUMN = f"ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '{LEGACY_ROLES}'"
"""The additive change for databases made before roles: existing rows take the default, both roles."""


class AccountError(StoreError):
    """A user that cannot be added: a bad name, a short password, a name already taken."""


def check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """The roles sorted and deduplicated; :class:`AccountError` for one not in :data:`ROLES`."""
    roles = tuple(roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise AccountError(f"role {unknown[0]!r}: one of {', '.join(ROLES)}")
    return tuple(sorted(set(roles)))


def _add_roles_column(path: Path) -> None:
    with connect(path) as db:
        columns = {r["name"] for r in db.execute("PRAGMA table_info(users)")}
        if "roles" in columns:
            return
        try:
            db.execute(ROLES_COLUMN)
        except sqlite3.OperationalError as exc:
            # Another process opening the same database may have added it a moment ago.
            if "duplicate column" not in str(exc):
                raise


def hash_password(password: str, salt: bytes) -> bytes:
    """The scrypt hash of ``password`` with ``salt`` (parameters :data:`KDF`)."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=SCRYPT_MAXMEM_BYTES, dklen=SCRYPT_KEY_BYTES)


class Accounts:
    """The console users of one approvals database."""

    def __init__(self, path: str | Path) -> None:
        self.path = open_database(path, USERS_SCHEMA)
        _add_roles_column(self.path)

    def add_user(self, name: str, password: str, roles: Iterable[str] = ROLES) -> None:
        """Add a console user; the name must be new (letters, digits, ``_.@-``), the password 8+ characters,
        ``roles`` a subset of :data:`ROLES` (default both)."""
        if not USER_NAME_RE.fullmatch(name or ""):
            raise AccountError(f"user name {name!r}: use 1 to 64 letters, digits or _.@-")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"password for {name!r}: at least {MIN_PASSWORD_CHARS} characters")
        held = check_roles(roles)
        salt = secrets.token_bytes(SALT_BYTES)
        try:
            with connect(self.path) as db:
                db.execute("INSERT INTO users (name, kdf, salt, password_hash, created, roles)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           (name, KDF, salt, hash_password(password, salt), datetime.now(UTC).isoformat(),
                            " ".join(held)))
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} already exists") from None

    def roles(self, name: str) -> tuple[str, ...]:
        """The user's roles (sorted); empty for an unknown user."""
        with connect(self.path) as db:
            row = db.execute("SELECT roles FROM users WHERE name = ?", (name,)).fetchone()
        return tuple(r for r in (row["roles"].split() if row else ()) if r in ROLES)

    def has_role(self, name: str, role: str) -> bool:
        """Whether the user exists and holds ``role``."""
        return role in self.roles(name)

    def set_roles(self, name: str, roles: Iterable[str]) -> tuple[str, ...]:
        """Replace the user's roles; returns them. :class:`AccountError` for an unknown user or role."""
        held = check_roles(roles)
        with connect(self.path) as db:
            cur = db.execute("UPDATE users SET roles = ? WHERE name = ?", (" ".join(held), name))
        if cur.rowcount == 0:
            raise AccountError(f"user {name!r}: no such user")
        return held

    def session_generation(self, name: str) -> int | None:
        """How many times the user's sessions were revoked (a cookie carries this number from its login);
        ``None`` for an unknown user."""
        with connect(self.path) as db:
            row = db.execute("SELECT (SELECT count(*) FROM session_revocations r WHERE r.name = u.name) AS n"
                             " FROM users u WHERE u.name = ?", (name,)).fetchone()
        return None if row is None else int(row["n"])

    def revoke_sessions(self, name: str, by: str) -> int:
        """End every session of the user issued until now (their cookies are refused from the next
        request on); ``by`` says who asked. Returns the new generation."""
        if not self.has_user(name):
            raise AccountError(f"user {name!r}: no such user")
        with connect(self.path) as db:
            db.execute("INSERT INTO session_revocations (name, time_utc, revoked_by) VALUES (?, ?, ?)",
                       (name, datetime.now(UTC).isoformat(), by))
        return int(self.session_generation(name) or 0)

    def check_password(self, name: str, password: str) -> bool:
        """True if the user exists and the password is theirs."""
        with connect(self.path) as db:
            row = db.execute("SELECT kdf, salt, password_hash FROM users WHERE name = ?", (name,)).fetchone()
        if row is None or row["kdf"] != KDF:
            # Hash anyway, so the answer takes as long for an unknown name as for a wrong password.
            hash_password(password, b"\0" * SALT_BYTES)
            return False
        return hmac.compare_digest(hash_password(password, row["salt"]), row["password_hash"])

    def users(self) -> list[str]:
        """The user names."""
        with connect(self.path) as db:
            return [r[0] for r in db.execute("SELECT name FROM users ORDER BY name")]

    def has_user(self, name: str) -> bool:
        """Whether a user of this name exists."""
        with connect(self.path) as db:
            return db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is not None
