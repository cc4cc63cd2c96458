"""Credentials and transport of a deployment: the API key from a file or the environment, never from the
command line; the printer URL checked.

- The key: ``--api-key-file F`` (first line; the file should be owner-only) or the environment variable
  :data:`API_KEY_ENV`. There is no ``--api-key``: a command line is readable by every local user
  (``/proc/PID/cmdline``). The key is never logged, never stored in the deployments database, never printed.
- The URL: ``http``/``https`` (``wss`` follows from ``https``); a plain-``http`` URL to anything but the
  loopback sends the key and the program in clear, so it needs ``--allow-insecure-http``; the URL may not
  carry credentials (``http://user:pw@…``).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

API_KEY_ENV = "LAYERLOOP_MOONRAKER_API_KEY"
"""Environment variable holding the Moonraker API key (when no key file is given)."""
LOOPBACK_NAMES = ("localhost",)


class CredentialError(ValueError):
    """A key or URL a deployment refuses (says which and why; never contains the key)."""


def read_api_key(key_file: Path | None) -> str | None:
    """The API key from ``key_file``'s first line, else :data:`API_KEY_ENV`, else None (a trusted client)."""
    if key_file is not None:
        try:
            lines = Path(key_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CredentialError(f"API key file {key_file}: cannot read ({exc.strerror})") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise CredentialError(f"API key file {key_file}: line 1 is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool = False) -> str:
    """``url`` without a trailing slash, if a deployment may use it (:class:`CredentialError` otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredentialError(f"printer URL {url!r}: must be http://HOST[:PORT] or https://HOST[:PORT]")
    if parts.username or parts.password:
        raise CredentialError("printer URL: must not carry credentials (use --api-key-file)")
    if parts.scheme == "http" and not is_loopback(parts.hostname) and not allow_insecure_http:
        raise CredentialError(f"printer URL {parts.scheme}://{parts.hostname}: plain http to another machine sends "
                              "the API key and the program in clear; use https, or pass --allow-insecure-http")
    return url.rstrip("/")
