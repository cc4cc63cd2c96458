"""Console users: names, passwords hashed with scrypt and a per-user salt, and login checks.

The users live in the ``users`` table of the approvals database (:mod:`safety.database`); the approvals
store records a decision only by a user who exists here, and the console signs in only a user whose
password :meth:`Accounts.check_password` accepts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from safety.database import StoreError, connect, open_database

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

USERS_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    kdf TEXT NOT NULL,
    salt BLOB NOT NULL,
    password_hash BLOB NOT NULL,
    created TEXT NOT NULL
);
"""


class AccountError(StoreError):
    """A user that cannot be added: a bad name, a short password, a name already taken."""


def hash_password(password: str, salt: bytes) -> bytes:
    """The scrypt hash of ``password`` with ``salt`` (parameters :data:`KDF`)."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=SCRYPT_MAXMEM_BYTES, dklen=SCRYPT_KEY_BYTES)


class Accounts:
    """The console users of one approvals database."""

    def __init__(self, path: str | Path) -> None:
        self.path = open_database(path, USERS_SCHEMA)

    def add_user(self, name: str, password: str) -> None:
        """Add a console user; the name must be new (letters, digits, ``_.@-``), the password 8+ characters."""
        if not USER_NAME_RE.fullmatch(name or ""):
            raise AccountError(f"user name {name!r}: use 1 to 64 letters, digits or _.@-")
        if len(password) < MIN_PASSWORD_CHARS:
            raise AccountError(f"password for {name!r}: at least {MIN_PASSWORD_CHARS} characters")
        salt = secrets.token_bytes(SALT_BYTES)
        try:
            with connect(self.path) as db:
                db.execute("INSERT INTO users (name, kdf, salt, password_hash, created) VALUES (?, ?, ?, ?, ?)",
                           (name, KDF, salt, hash_password(password, salt), datetime.now(UTC).isoformat()))
        except sqlite3.IntegrityError:
            raise AccountError(f"user {name!r} already exists") from None

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
