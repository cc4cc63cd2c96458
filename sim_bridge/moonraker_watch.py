"""Live telemetry from a Moonraker printer, kept current in a background thread: the websocket first
(``moonraker-api``: one subscription, changes pushed), polling when the websocket cannot be had at start.

:class:`TelemetryWatcher` holds the merged status of the watched objects and the time of the last message
from the printer. It never hides a lost connection: a websocket that drops is reconnected (every
:data:`RECONNECT_S`), and until then no message arrives, so :attr:`TelemetryWatcher.age_s` grows — the
deployment's watchdog decides what that means. Polling is the fallback only for a printer whose websocket
never connected (a proxy that forbids upgrades); it is said in :attr:`TelemetryWatcher.transport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ssl
import threading
import time
import warnings
from typing import Any
from urllib.parse import urlsplit

from sim_bridge.moonraker import (
    DEFAULT_PORT,
    OBJECTS_SUBSCRIBE,
    STATUS_NOTIFICATION,
    MoonrakerClient,
    MoonrakerError,
)

WATCHED_OBJECTS = ("webhooks", "print_stats", "virtual_sdcard", "toolhead", "extruder", "heater_bed",
                   "gcode_move", "fan")
"""What a deployment watches (all fields)."""
RECONNECT_S = 1.0
"""How often a dropped websocket is tried again."""
POLL_S = 0.5
"""Polling period when there is no websocket."""


class TelemetryWatcher:
    """The printer's status, kept current; start with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, client: MoonrakerClient, objects: tuple[str, ...] = WATCHED_OBJECTS,
                 connect_timeout_s: float = 5.0) -> None:
        self.client = client
        self.objects = objects
        self.connect_timeout_s = connect_timeout_s
        self._lock = threading.Lock()
        self._status: dict[str, dict[str, Any]] = {}
        self._last_message = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.transport = "none"
        """``websocket``, ``polling`` (the websocket never connected) or ``none`` (not started)."""
        self.connected = False
        """Whether the transport is up now."""
        self.drops = 0
        """How often an established websocket was lost."""

    def start(self) -> TelemetryWatcher:
        """Connect (the first status is read before this returns) and keep watching in the background."""
        self._status = {k: dict(v) for k, v in self.client.objects_query(self.objects).items()}
        self._last_message = time.monotonic()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="telemetry")
        self._thread.start()
        ready.wait(self.connect_timeout_s + 1.0)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.connect_timeout_s + 2.0)

    def status(self) -> dict[str, dict[str, Any]]:
        """A copy of the merged status (object → fields)."""
        with self._lock:
            return copy.deepcopy(self._status)

    @property
    def age_s(self) -> float:
        """Seconds since the last message from the printer."""
        return time.monotonic() - self._last_message

    # -- transport
    def _merge(self, change: dict[str, Any]) -> None:
        with self._lock:
            for name, fields in change.items():
                if isinstance(fields, dict):
                    self._status.setdefault(name, {}).update(fields)
            self._last_message = time.monotonic()

    def _run(self, ready: threading.Event) -> None:
        first = True
        while not self._stop.is_set():
            # Any failure of the websocket is a lost connection, retried below.
            with contextlib.suppress(Exception):
                asyncio.run(self._websocket(ready))
            self.connected = False
            if first and self.transport != "websocket":
                self.transport = "polling"
                ready.set()
                self._poll()
                return
            first = False
            if not self._stop.is_set():
                self.drops += 1
                self._stop.wait(RECONNECT_S)

    def _poll(self) -> None:
        self.connected = True
        while not self._stop.is_set():
            try:
                self._merge(self.client.objects_query(self.objects))
                self.connected = True
            except MoonrakerError:
                self.connected = False
            self._stop.wait(POLL_S)

    async def _websocket(self, ready: threading.Event) -> None:
        # moonraker-api is needed only while a deployment watches a printer.
        import aiohttp
        from moonraker_api import MoonrakerClient as WebsocketClient
        from moonraker_api import MoonrakerListener

        merge = self._merge
        closed = asyncio.Event()

        class Listener(MoonrakerListener):  # type: ignore[misc]
            async def on_notification(self, method: str, data: Any) -> None:
                if method == STATUS_NOTIFICATION and isinstance(data, list) and data and isinstance(data[0], dict):
                    merge(data[0])

            async def on_exception(self, exception: BaseException) -> None:
                closed.set()

        url = urlsplit(self.client.url)
        secure = url.scheme == "https"
        port = url.port or (443 if secure else DEFAULT_PORT)
        # A verifying context made now, not aiohttp's, which it builds once at import: a certificate trusted
        # through SSL_CERT_FILE then counts for the websocket exactly as for the HTTP calls.
        connector = aiohttp.TCPConnector(ssl=ssl.create_default_context()) if secure else None
        async with aiohttp.ClientSession(connector=connector) as session:
            ws = WebsocketClient(Listener(), url.hostname, port, api_key=self.client.api_key, ssl=secure,
                                 timeout=int(self.connect_timeout_s), session=session)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # moonraker-api 4.0 on aiohttp 3.14
                if not await ws.connect():
                    raise ConnectionError("websocket did not connect")
            try:
                result = await ws.call_method(OBJECTS_SUBSCRIBE.rpc_method,
                                              objects={name: None for name in self.objects})
                if "error" in result:
                    raise ConnectionError(f"subscribe refused: {result['error']}")
                merge(result["status"])
                self.transport, self.connected = "websocket", True
                ready.set()
                while not self._stop.is_set() and not closed.is_set() and ws.is_connected:
                    await asyncio.sleep(0.1)
            finally:
                await ws.disconnect()
