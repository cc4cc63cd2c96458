"""What a deployment's live page shows, read from :class:`safety.deployments.DeploymentStore`.

:func:`snapshot` is the body of the page's JSON endpoint (``GET /deployment/{id}/live.json``), which the
page polls: the deployment's facts, its state (its last ``state`` event), the latest ``telemetry`` event
(temperatures, layer, progress 0..1, ETA, the printer's print state), the temperature series for the plot
(thinned to :data:`MAX_PLOT_POINTS`), the supervisor's last proposals, verdicts and sends, the watchdog
events, the operators' requests and the actions carried out, and the summary once there is one.

Only what the deployment process wrote to the store is shown, plus the printer URL stripped of anything
but scheme, host, port and path (the store never holds a credential; the page would not show one).
"""

from __future__ import annotations

import math
import urllib.parse
from datetime import UTC, datetime
from typing import Any

from safety.deployments import Deployment, DeploymentStore, Event

MAX_PLOT_POINTS = 600
"""Temperature samples sent to the page at most (evenly thinned, the newest always kept)."""
RECENT_ROWS = 20
"""How many of the newest proposals/verdicts/sends, watchdog events, requests and actions are sent."""
MAX_TEXT_CHARS = 500
"""Longest text of one field sent to the page (a command, a reason, a watchdog's detail)."""
TEMPERATURE_KEYS = ("hotend_temp_c", "hotend_target_c", "bed_temp_c", "bed_target_c")
TELEMETRY_KEYS = TEMPERATURE_KEYS + ("layer", "progress", "eta_s", "print_state")
"""What a ``telemetry`` event holds (the contract with the deployment process)."""
OPTIONAL_TELEMETRY_KEYS = ("layer_count", "klippy_state", "speed_factor", "extrude_factor", "fan")
"""Shown too when the deployment process writes them."""
TUNING_KINDS = ("proposal", "verdict", "sent")
FIRST_LAYER_STAGE = "first-layer"
COMPLETE_STATE = "complete"
"""The state in which a first-layer deployment's layer can be confirmed."""


def utc(at: float) -> str:
    """Unix time as ISO 8601 UTC to the second, e.g. ``2026-12-01T23:40:00Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def public_url(url: str) -> str:
    """``url`` with any user, password, query and fragment removed (what a page may show)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _scalar(value: Any) -> Any:
    """A JSON-safe scalar for the page (numbers finite, anything else as short text)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return _number(value)
    return str(value)[:MAX_TEXT_CHARS]


def _thin(n: int, most: int) -> list[int]:
    if n <= most:
        return list(range(n))
    step = (n - 1) / (most - 1)
    return sorted({round(i * step) for i in range(most)})


def _texts(value: Any) -> list[str]:
    """A list of short texts from a list, a single value or nothing."""
    items = value if isinstance(value, list) else ([] if value in (None, "") else [value])
    return [str(v)[:MAX_TEXT_CHARS] for v in items]


def _tuning_row(e: Event) -> dict[str, Any]:
    allowed = e.body.get("allowed")
    return {"id": e.id, "time_utc": utc(e.at), "kind": e.kind, "commands": "\n".join(_texts(e.body.get("commands"))),
            "allowed": allowed if isinstance(allowed, bool) else None, "reasons": _texts(e.body.get("reasons"))}


def _event_row(e: Event) -> dict[str, Any]:
    return {"id": e.id, "time_utc": utc(e.at), "kind": e.kind,
            "body": {str(k)[:100]: _scalar(v) for k, v in sorted(e.body.items())}}


def deployment_facts(d: Deployment) -> dict[str, Any]:
    """A deployment's row for pages: its URL without credentials, times in UTC."""
    return {"id": d.id, "sha256": d.sha256, "stage": d.stage, "printer": d.printer,
            "printer_url": public_url(d.printer_url), "started_by": d.started_by,
            "started_at_utc": utc(d.started_at)}


def may_confirm_first_layer(d: Deployment, state: str) -> bool:
    """Only a first-layer deployment that completed has a first layer to confirm."""
    return d.stage == FIRST_LAYER_STAGE and state == COMPLETE_STATE


def snapshot(store: DeploymentStore, deployment_id: int) -> dict[str, Any]:
    """Everything the live page shows about one deployment (module docstring); JSON-safe."""
    d = store.deployment(deployment_id)
    events = store.events(deployment_id)
    by_kind: dict[str, list[Event]] = {}
    for e in events:
        by_kind.setdefault(e.kind, []).append(e)
    states = by_kind.get("state", [])
    state = str(states[-1].body.get("state", "?")) if states else "starting"
    telemetry = by_kind.get("telemetry", [])
    latest = None
    if telemetry:
        last = telemetry[-1]
        latest = {"time_utc": utc(last.at),
                  **{k: _scalar(last.body.get(k)) for k in TELEMETRY_KEYS + OPTIONAL_TELEMETRY_KEYS}}
    keep = _thin(len(telemetry), MAX_PLOT_POINTS)
    series: dict[str, list[float | None]] = {"t_s": [round(telemetry[i].at - d.started_at, 2) for i in keep]}
    for key in TEMPERATURE_KEYS:
        series[key] = [_number(telemetry[i].body.get(key)) for i in keep]
    tuning = sorted((e for k in TUNING_KINDS for e in by_kind.get(k, [])), key=lambda e: e.id)
    requests = store.requests_after(deployment_id, 0)
    summaries = by_kind.get("summary", [])
    return {
        "deployment": deployment_facts(d),
        "state": state,
        "telemetry": latest,
        "series": series,
        "tuning": [_tuning_row(e) for e in tuning[-RECENT_ROWS:]][::-1],
        "watchdog": [_event_row(e) for e in by_kind.get("watchdog", [])[-RECENT_ROWS:]][::-1],
        "actions": [_event_row(e) for e in by_kind.get("action", [])[-RECENT_ROWS:]][::-1],
        "errors": [_event_row(e) for e in by_kind.get("error", [])[-RECENT_ROWS:]][::-1],
        "requests": [{"id": r.id, "time_utc": utc(r.at), "user": r.user, "action": r.action}
                     for r in requests[-RECENT_ROWS:]][::-1],
        "summary": _event_row(summaries[-1])["body"] if summaries else None,
        "may_confirm_first_layer": may_confirm_first_layer(d, state),
        "last_event_id": events[-1].id if events else 0,
    }


def deployment_list(store: DeploymentStore) -> list[dict[str, Any]]:
    """Every deployment, newest first, with its state."""
    return [{**deployment_facts(d), "state": store.state(d.id)} for d in store.deployments()]
