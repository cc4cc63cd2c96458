"""The console's settings: a frozen dataclass, checked when built (see :mod:`sim_bridge.config`)."""

from __future__ import annotations

from dataclasses import dataclass

from sim_bridge.config import check_ranges, ranged

MIB = 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class ConsoleConfig:
    """How the approval console serves (CLI flags map 1:1 to fields)."""

    db: str = "approvals.db"
    """The approvals database (SQLite); its session secret lives beside it as ``<db>.secret``."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback exposes the console to the network (a warning is printed)."""
    port: int = ranged(8765, 1, 65535)
    """TCP port."""
    max_upload_mib: float = ranged(20.0, 0.01, 1024.0)
    """Largest request body (an uploaded program and its expert program together); larger → HTTP 413."""
    session_max_age_s: int = ranged(8 * 3600, 60, 30 * 24 * 3600)
    """How long a login lasts."""
    secure_cookie: bool = False
    """Mark the session cookie ``Secure`` (only sent over HTTPS): set it when a TLS proxy fronts the console."""
    submitter_may_approve: bool = False
    """Whether the user who submitted a program may approve it themself. Off: another reviewer must (the
    submitter may still reject it)."""
    login_max_failures: int = ranged(5, 1, 1000)
    """Failed logins allowed within :attr:`login_window_s`, per user name and per client address; the next
    attempt gets HTTP 429 with the time to retry, until enough of them have aged out."""
    login_window_s: float = ranged(15 * 60.0, 0.1, 24 * 3600.0)
    """The window of the login rate limit (s)."""
    live_poll_s: float = ranged(1.5, 0.2, 60.0)
    """How often a deployment's live page asks for news (s)."""

    def __post_init__(self) -> None:
        check_ranges(self)

    @property
    def max_upload_bytes(self) -> int:
        """:attr:`max_upload_mib` in bytes."""
        return int(self.max_upload_mib * MIB)
