"""The console's roles, login rate limit, session revocation and action log, and a deployment's live page:
the stores on a real SQLite file, the console served by a real uvicorn on 127.0.0.1, and an operator's
path through the live page in a real headless Chromium.

The deployments here are recorded in the real :class:`~safety.deployments.DeploymentStore` by the test,
writing the events the way the deployment process (``python -m safety.deploy``) writes them — state,
telemetry, the supervisor's proposals/verdicts/sends, watchdog events. The deployment process itself, on
the virtual printer, is tested in the lead's tests of ``safety.deploy``; here the console is the subject.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_safety_console import (
    FORM,
    GOOD,
    PASSWORD,
    Served,
    _browser_missing,
    chrome,
    cookie_of,
    csrf_of,
    form,
    multipart,
    program,
    request,
    serve,
)

from safety.accounts import LEGACY_ROLES, OPERATOR, REVIEWER, ROLES, AccountError, Accounts, hash_password
from safety.approvals import ApprovalError, ApprovalStore
from safety.console.__main__ import main as console_main
from safety.console.activity import LOGIN_FAILED, REFUSED, ActivityLog, login_retry_at
from safety.console.config import ConsoleConfig
from safety.console.live import public_url, snapshot
from safety.deployments import DeploymentStore
from safety.gate import CONFIRMED, Check, GateLog, GateResult

WINDOW_S = 1.5
"""The served console's login rate-limit window: short, so waiting it out keeps the test fast."""
MAX_FAILURES = 3
POLL_S = 0.3
WRONG = "not the password at all"
URL_SECRET = "hunter2-url-secret"
SHA_FULL = hashlib.sha256(GOOD).hexdigest()
SHA_FIRST = hashlib.sha256(program(shift_mm=2.0)).hexdigest()
SHA_NEVER_GATED = hashlib.sha256(program(shift_mm=3.0)).hexdigest()


def telemetry(layer: int, progress: float, hotend_c: float = 204.6, bed_c: float = 59.8) -> dict[str, Any]:
    """A ``telemetry`` event body as the deployment process writes it."""
    return {"hotend_temp_c": hotend_c, "hotend_target_c": 205.0, "bed_temp_c": bed_c, "bed_target_c": 60.0,
            "layer": layer, "progress": progress, "eta_s": 600.0 * (1 - progress), "print_state": "printing",
            "layer_count": 5, "speed_factor": 0.9}


def record_printing(store: DeploymentStore, url: str = "http://127.0.0.1:7125") -> int:
    """A full deployment in mid-print: heating, three layers of telemetry, one accepted and one refused
    tuning proposal, a watchdog warning."""
    did = store.start(SHA_FULL, "full", url, "ender3-klipper", "otto", os.getpid())
    store.event(did, "state", {"state": "printing"})
    for k in range(12):
        store.event(did, "telemetry", telemetry(layer=1 + k // 4, progress=0.02 * k, hotend_c=150.0 + 5 * k,
                                                bed_c=40.0 + 2 * k))
    store.event(did, "proposal", {"commands": ["M220 S90"], "allowed": None, "reasons": []})
    store.event(did, "verdict", {"commands": ["M220 S90"], "allowed": True, "reasons": []})
    store.event(did, "sent", {"commands": ["M220 S90"], "allowed": True, "reasons": []})
    store.event(did, "proposal", {"commands": ["M104 S290"], "allowed": None, "reasons": []})
    store.event(did, "verdict", {"commands": ["M104 S290"], "allowed": False,
                                 "reasons": ["hotend target 290 °C outside the live window 190..230 °C"]})
    store.event(did, "watchdog", {"watchdog": "heater-deviation", "detail": "hotend 4.4 °C under target",
                                  "action": "none"})
    return did


def record_first_layer(store: DeploymentStore, sha256: str, state: str = "complete") -> int:
    did = store.start(sha256, "first-layer", "http://127.0.0.1:7125", "ender3-klipper", "otto", os.getpid())
    store.event(did, "state", {"state": "printing"})
    store.event(did, "telemetry", telemetry(layer=1, progress=1.0))
    store.event(did, "state", {"state": state})
    store.event(did, "summary", {"outcome": state, "layers": 1})
    return did


@dataclass
class Live:
    served: Served
    config: ConsoleConfig
    deployments: DeploymentStore
    activity: ActivityLog
    printing: int
    first_layer: int
    never_gated: int
    secret_url: int


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    folder = tmp_path_factory.mktemp("live")
    config = ConsoleConfig(db=str(folder / "approvals.db"), login_max_failures=MAX_FAILURES,
                           login_window_s=WINDOW_S, live_poll_s=POLL_S)
    store = ApprovalStore(config.db)
    store.accounts.add_user("rita", PASSWORD, [REVIEWER])
    store.accounts.add_user("otto", PASSWORD, [OPERATOR])
    store.accounts.add_user("ada", PASSWORD)
    deployments = DeploymentStore(config.db)
    printing = record_printing(deployments)
    first_layer = record_first_layer(deployments, SHA_FIRST)
    never_gated = record_first_layer(deployments, SHA_NEVER_GATED)
    secret_url = record_printing(deployments, f"https://op:{URL_SECRET}@printer.local:7125/?token={URL_SECRET}")
    # The first layer of SHA_FIRST went through the gate (what `safety.deploy --stage first-layer` records).
    log = GateLog(config.db)
    with contextlib.closing(log.db):
        log.record(GateResult("first-layer", SHA_FIRST, (Check("validator", True, "allowed"),)), user="otto")
    with serve(store, config) as served:
        yield Live(served, config, deployments, ActivityLog(config.db), printing, first_layer, never_gated,
                   secret_url)


def try_login(served: Served, name: str, password: str = PASSWORD) -> tuple[int, Any, str]:
    """(status, headers, session cookie or '') of one login through the form."""
    page = request(served, "GET", "/login")
    reply = request(served, "POST", "/login", form({"username": name, "password": password,
                                                    "csrf_token": csrf_of(page.body)}),
                    {**FORM, "Cookie": cookie_of(page)})
    return reply.status, reply.headers, (cookie_of(reply) if reply.status == 303 else reply.body)


def login_as(served: Served, name: str) -> tuple[str, str]:
    """A logged-in session: (cookie header value, CSRF token)."""
    status, _, cookie = try_login(served, name)
    assert status == 303, (name, status)
    page = request(served, "GET", "/deployments", headers={"Cookie": cookie})
    assert page.status == 200
    return cookie, csrf_of(page.body)


def post(served: Served, path: str, cookie: str, fields: dict[str, str]) -> Any:
    return request(served, "POST", path, form(fields), {**FORM, "Cookie": cookie})


def actions_of(live: Live, user: str, action: str, outcome: str | None = None) -> list[Any]:
    return [a for a in live.activity.rows() if a.user == user and a.action == action
            and (outcome is None or a.outcome == outcome)]


# -- the stores ----------------------------------------------------------------------------------------------
def test_a_database_from_before_roles_opens_and_its_users_hold_both(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    salt = b"s" * 16
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        # The users table exactly as the console made it before roles existed.
        con.execute("CREATE TABLE users (name TEXT PRIMARY KEY, kdf TEXT NOT NULL, salt BLOB NOT NULL, "
                    "password_hash BLOB NOT NULL, created TEXT NOT NULL)")
        con.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                    ("old", "scrypt:16384:8:1", salt, hash_password(PASSWORD, salt), "2026-01-01T00:00:00+00:00"))
    accounts = Accounts(db)
    assert accounts.roles("old") == tuple(sorted(ROLES)) == tuple(LEGACY_ROLES.split())
    assert accounts.check_password("old", PASSWORD) and accounts.session_generation("old") == 0
    Accounts(db)  # opening again does not add the column twice
    accounts.add_user("viewer", PASSWORD, [OPERATOR])
    assert accounts.roles("viewer") == (OPERATOR,) and not accounts.has_role("viewer", REVIEWER)
    assert accounts.roles("nobody") == () and accounts.session_generation("nobody") is None
    with pytest.raises(AccountError, match="role 'admin': one of reviewer, operator"):
        accounts.add_user("boss", PASSWORD, ["admin"])
    with pytest.raises(AccountError, match="no such user"):
        accounts.set_roles("nobody", [REVIEWER])
    assert accounts.set_roles("viewer", [REVIEWER, OPERATOR, REVIEWER]) == (OPERATOR, REVIEWER)


def test_a_decision_needs_a_reviewer_who_did_not_submit_the_program(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.db")
    store.accounts.add_user("rita", PASSWORD, [REVIEWER])
    store.accounts.add_user("otto", PASSWORD, [OPERATOR])
    own = store.submit(GOOD, printer="ender3-klipper", job="own", submitted_by="rita")
    with pytest.raises(ApprovalError, match="'otto' is not a reviewer"):
        store.decide(own, "otto", "approve", "looks fine")
    with pytest.raises(ApprovalError, match="submitted by rita: the submitter cannot approve it alone"):
        store.decide(own, "rita", "approve", "mine, looks fine")
    assert store.audit() == [] and store.program(own).status == "pending"
    assert store.decide(own, "rita", "approve", "allowed here", submitter_may_approve=True).decision == "approve"
    withdrawn = store.submit(GOOD, printer="ender3-klipper", job="withdrawn", submitted_by="rita")
    assert store.decide(withdrawn, "rita", "reject", "withdrawn by its submitter").decision == "reject"


def test_revocations_and_console_actions_are_append_only(tmp_path: Path) -> None:
    accounts = Accounts(tmp_path / "r.db")
    accounts.add_user("ada", PASSWORD)
    assert [accounts.revoke_sessions("ada", by="ada") for _ in range(2)] == [1, 2]
    with pytest.raises(AccountError, match="no such user"):
        accounts.revoke_sessions("nobody", by="ada")
    log = ActivityLog(accounts.path)
    log.record("ada", "127.0.0.1", "pause", "deployment:1", request_id=3)
    with contextlib.closing(sqlite3.connect(accounts.path)) as db:
        for sql in ("UPDATE console_audit SET outcome = 'refused'", "DELETE FROM console_audit",
                    "UPDATE session_revocations SET name = 'x'", "DELETE FROM session_revocations"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
    assert [(a.action, a.target, a.detail) for a in log.rows()] == [("pause", "deployment:1", {"request_id": 3})]
    assert accounts.session_generation("ada") == 2


def test_the_login_limit_counts_failures_per_name_and_per_address(tmp_path: Path) -> None:
    log = ActivityLog(tmp_path / "l.db")
    now = time.time()
    for _ in range(3):
        log.record("ada", "10.0.0.1", LOGIN_FAILED, "user:ada", REFUSED)
    assert login_retry_at(log, "ada", "10.0.0.2", 4, 60.0) is None
    retry = login_retry_at(log, "ada", "10.0.0.2", 3, 60.0)
    assert retry is not None and now + 59 < retry < time.time() + 61
    assert login_retry_at(log, "bob", "10.0.0.1", 3, 60.0) is not None  # the address is limited too
    assert login_retry_at(log, "bob", "10.0.0.2", 3, 60.0) is None
    assert login_retry_at(log, "ada", "10.0.0.2", 3, 60.0, now=time.time() + 61) is None  # aged out
    log.record("ada", "10.0.0.1", "login", "user:ada")
    assert login_retry_at(log, "ada", "10.0.0.2", 3, 60.0) is None  # a success ends the name's run
    assert login_retry_at(log, "bob", "10.0.0.1", 3, 60.0) is not None  # not the address's


def test_the_page_never_shows_credentials_in_a_printer_url() -> None:
    assert public_url(f"https://op:{URL_SECRET}@printer.local:7125/x?token={URL_SECRET}#f") == \
        "https://printer.local:7125/x"
    assert public_url("http://[::1]:7125") == "http://[::1]:7125"
    assert public_url("http://127.0.0.1:7125") == "http://127.0.0.1:7125"


def test_the_snapshot_holds_what_the_deployment_wrote(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path / "d.db")
    did = record_printing(store)
    got = snapshot(store, did)
    assert got["state"] == "printing" and got["deployment"]["sha256"] == SHA_FULL
    assert got["telemetry"]["layer"] == 3 and got["telemetry"]["hotend_temp_c"] == 205.0
    assert len(got["series"]["t_s"]) == 12 and got["series"]["bed_temp_c"][-1] == 62.0
    newest = got["tuning"][0]
    assert (newest["kind"], newest["commands"], newest["allowed"]) == ("verdict", "M104 S290", False)
    assert "outside the live window" in newest["reasons"][0]
    assert got["watchdog"][0]["body"]["watchdog"] == "heater-deviation" and not got["may_confirm_first_layer"]
    json.dumps(got, allow_nan=False)  # the endpoint's body is strict JSON


# -- the CLI -------------------------------------------------------------------------------------------------
def test_cli_adds_users_with_roles_changes_them_and_revokes_sessions(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "cli.db")
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(PASSWORD + "\n"))
    assert console_main(["adduser", "rita", "--role", "reviewer", "--password-stdin", "--db", db]) == 0
    assert "added user rita (reviewer)" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(PASSWORD + "\n"))
    assert console_main(["adduser", "both", "--password-stdin", "--db", db]) == 0
    assert console_main(["set-roles", "rita", "--role", "operator", "--db", db]) == 0
    with pytest.raises(SystemExit) as exc:
        console_main(["set-roles", "rita", "--role", "admin", "--db", db])
    assert exc.value.code == 2
    capsys.readouterr()
    assert console_main(["users", "--db", db]) == 0
    assert capsys.readouterr().out == "both\toperator reviewer\nrita\toperator\n"
    assert console_main(["revoke-sessions", "rita", "--db", db]) == 0
    assert Accounts(db).session_generation("rita") == 1
    assert console_main(["revoke-sessions", "nobody", "--db", db]) == 2
    assert "no such user" in capsys.readouterr().err
    assert console_main(["actions", "--db", db]) == 0
    out = capsys.readouterr().out
    assert [line.split("\t")[4] for line in out.splitlines()] == ["adduser", "adduser", "set-roles",
                                                                  "revoke-sessions"]
    assert PASSWORD not in out and "\tcli\t" in out


# -- the served console ------------------------------------------------------------------------------------------
def test_roles_are_enforced_by_the_console(live: Live) -> None:
    served, store = live.served, live.served.store
    pid = store.submit(GOOD, printer="ender3-klipper", job="roles", submitted_by="bot")
    otto, otto_csrf = login_as(served, "otto")
    reply = post(served, f"/program/{pid}/decision", otto, {"decision": "approve", "comment": "ok",
                                                            "csrf_token": otto_csrf})
    assert reply.status == 403 and "not a reviewer" in reply.body
    assert store.program(pid).status == "pending"
    assert actions_of(live, "otto", "approve", REFUSED)[-1].target == f"program:{pid}"

    rita, rita_csrf = login_as(served, "rita")
    before = live.deployments.requests_after(live.printing, 0)
    page = request(served, "GET", f"/deployment/{live.printing}", headers={"Cookie": rita})
    assert page.status == 200 and 'id="not-operator"' in page.body
    for action in ("pause", "estop", "confirm-first-layer"):
        reply = post(served, f"/deployment/{live.printing}/request", rita, {"action": action, "csrf_token": rita_csrf})
        assert reply.status == 403 and "Your account (rita) is not an operator" in reply.body, action
    assert live.deployments.requests_after(live.printing, 0) == before
    assert len(actions_of(live, "rita", "estop", REFUSED)) == 1

    reply = post(served, f"/program/{pid}/decision", rita, {"decision": "approve", "comment": "checked",
                                                            "csrf_token": rita_csrf})
    assert reply.status == 303 and store.program(pid).status == "approved"
    (done,) = actions_of(live, "rita", "approve", "done")
    assert done.target == f"program:{pid}" and done.detail["sha256"] == store.program(pid).sha256


def test_the_submitter_cannot_approve_alone_unless_configured(live: Live) -> None:
    served, store = live.served, live.served.store
    ada, ada_csrf = login_as(served, "ada")
    body, ctype = multipart({"csrf_token": ada_csrf, "printer": "ender3-klipper", "job": "ada's part"},
                            {"program": ("part.gcode", program(shift_mm=7.0))})
    reply = request(served, "POST", "/submit", body, {"Cookie": ada, "Content-Type": ctype})
    assert reply.status == 303
    pid = int(reply.headers["Location"].rsplit("/", 1)[1])
    assert store.program(pid).submitted_by == "ada" and actions_of(live, "ada", "submit")[-1].target == f"program:{pid}"
    reply = post(served, f"/program/{pid}/decision", ada, {"decision": "approve", "comment": "mine",
                                                           "csrf_token": ada_csrf})
    assert reply.status == 409 and "the submitter cannot approve it alone" in reply.body
    assert store.program(pid).status == "pending"

    with serve(store, dataclasses.replace(live.config, submitter_may_approve=True)) as lenient:
        cookie, token = login_as(lenient, "ada")
        reply = post(lenient, f"/program/{pid}/decision", cookie, {"decision": "approve", "comment": "allowed here",
                                                                   "csrf_token": token})
        assert reply.status == 303
    assert store.program(pid).status == "approved" and store.program(pid).decision.user == "ada"


def test_posts_without_the_csrf_token_are_refused_and_logged(live: Live) -> None:
    served = live.served
    otto, token = login_as(served, "otto")
    before = live.deployments.requests_after(live.printing, 0)
    for fields in ({}, {"csrf_token": ""}, {"csrf_token": token[:-1] + "x"}):
        for path, extra in ((f"/deployment/{live.printing}/request", {"action": "pause"}),
                            (f"/deployment/{live.printing}/request", {"action": "estop"}),
                            ("/logout-everywhere", {})):
            reply = post(served, path, otto, {**extra, **fields})
            assert reply.status == 403 and "CSRF" in reply.body, (path, fields)
    assert live.deployments.requests_after(live.printing, 0) == before
    assert Accounts(live.config.db).session_generation("otto") == 0
    assert len(actions_of(live, "otto", "csrf", REFUSED)) == 9
    assert request(served, "GET", "/deployments", headers={"Cookie": otto}).status == 200


def test_the_live_json_needs_a_login_and_shows_no_credentials(live: Live) -> None:
    served = live.served
    reply = request(served, "GET", f"/deployment/{live.printing}/live.json")
    assert (reply.status, reply.headers["Location"]) == (303, "/login")
    otto, _ = login_as(served, "otto")
    reply = request(served, "GET", f"/deployment/{live.printing}/live.json", headers={"Cookie": otto})
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    got = json.loads(reply.body)
    assert got["state"] == "printing" and got["telemetry"]["layer"] == 3
    assert request(served, "GET", "/deployment/999/live.json", headers={"Cookie": otto}).status == 404
    listing = request(served, "GET", "/deployments", headers={"Cookie": otto})
    for path in (f"/deployment/{live.secret_url}", f"/deployment/{live.secret_url}/live.json", "/deployments"):
        reply = request(served, "GET", path, headers={"Cookie": otto})
        assert reply.status == 200 and URL_SECRET not in reply.body and "printer.local:7125" in reply.body
    assert f'href="/deployment/{live.printing}"' in listing.body
    page = request(served, "GET", f"/deployment/{live.printing}", headers={"Cookie": otto})
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    # Every other page still runs no script at all.
    assert "script-src" not in request(served, "GET", "/deployments", headers={"Cookie": otto}).headers[
        "Content-Security-Policy"]


def test_confirming_a_first_layer_needs_a_completed_first_layer_deployment(live: Live) -> None:
    served = live.served
    otto, token = login_as(served, "otto")
    fields = {"action": "confirm-first-layer", "comment": "even, well stuck", "csrf_token": token}
    reply = post(served, f"/deployment/{live.printing}/request", otto, fields)
    assert reply.status == 409 and "only a first-layer deployment that completed" in reply.body
    reply = post(served, f"/deployment/{live.never_gated}/request", otto, fields)
    assert reply.status == 409 and "never deployed through the gate" in reply.body
    log = GateLog(live.config.db)
    with contextlib.closing(log.db):
        assert not log.passed(SHA_FIRST, CONFIRMED) and not log.passed(SHA_NEVER_GATED, CONFIRMED)
    assert not live.deployments.requests_after(live.never_gated, 0)

    reply = post(served, f"/deployment/{live.first_layer}/request", otto, fields)
    assert (reply.status, reply.headers["Location"]) == (303, f"/deployment/{live.first_layer}?done=confirm-first-layer")
    log = GateLog(live.config.db)
    with contextlib.closing(log.db):
        assert log.passed(SHA_FIRST, CONFIRMED)
        (row,) = [r for r in log.rows() if r["stage"] == CONFIRMED]
    assert row["user"] == "otto" and json.loads(row["detail"]) == {"comment": "even, well stuck"}
    (req,) = live.deployments.requests_after(live.first_layer, 0)
    assert (req.user, req.action) == ("otto", "confirm-first-layer")
    done = actions_of(live, "otto", "confirm-first-layer", "done")[-1]
    assert done.detail == {"comment": "even, well stuck", "request_id": req.id, "sha256": SHA_FIRST}
    assert len(actions_of(live, "otto", "confirm-first-layer", REFUSED)) == 2


def test_an_operator_labels_a_finished_print(live: Live) -> None:
    served = live.served
    otto, token = login_as(served, "otto")
    fields = {"outcome": "failure", "failure_mode": "layer shift", "note": "at 12 mm", "csrf_token": token}
    reply = post(served, f"/deployment/{live.printing}/label", otto, fields)
    assert reply.status == 409 and "only a finished print" in reply.body
    assert not live.deployments.events(live.printing, "label")
    reply = post(served, f"/deployment/{live.first_layer}/label", otto, {**fields, "outcome": "meh"})
    assert reply.status == 409 and "one of success, failure" in reply.body
    reply = post(served, f"/deployment/{live.first_layer}/label", otto, {**fields, "csrf_token": "forged"})
    assert reply.status == 403
    reply = post(served, f"/deployment/{live.first_layer}/label", otto, fields)
    assert (reply.status, reply.headers["Location"]) == (303, f"/deployment/{live.first_layer}?done=label")
    (label,) = live.deployments.events(live.first_layer, "label")
    assert label.body == {"user": "otto", "outcome": "failure", "failure_mode": "layer shift", "note": "at 12 mm"}
    assert actions_of(live, "otto", "label", "done")
    rita, rita_token = login_as(served, "rita")
    reply = post(served, f"/deployment/{live.first_layer}/label", rita, {**fields, "csrf_token": rita_token})
    assert reply.status == 403 and len(live.deployments.events(live.first_layer, "label")) == 1


def test_revoked_sessions_are_refused_on_the_next_request(live: Live) -> None:
    served = live.served
    first, first_csrf = login_as(served, "ada")
    second, second_csrf = login_as(served, "ada")
    reply = post(served, "/logout-everywhere", first, {"csrf_token": first_csrf})
    assert (reply.status, reply.headers["Location"]) == (303, "/login")
    for cookie in (first, second):
        reply = request(served, "GET", "/deployments", headers={"Cookie": cookie})
        assert (reply.status, reply.headers["Location"]) == (303, "/login")
    reply = post(served, f"/deployment/{live.printing}/request", second, {"action": "pause",
                                                                         "csrf_token": second_csrf})
    assert reply.status == 401
    assert actions_of(live, "ada", "revoke-sessions")[-1].detail == {"generation": 1}

    third, _ = login_as(served, "ada")  # a new login works at once
    assert console_main(["revoke-sessions", "ada", "--db", live.config.db]) == 0
    assert request(served, "GET", "/deployments", headers={"Cookie": third}).headers["Location"] == "/login"
    assert actions_of(live, "cli", "revoke-sessions")[-1].target == "user:ada"
    fourth, fourth_csrf = login_as(served, "ada")
    assert post(served, "/logout", fourth, {"csrf_token": fourth_csrf}).status == 303
    assert actions_of(live, "ada", "logout")


def test_logins_are_rate_limited_per_name_and_per_address(live: Live) -> None:
    served = live.served
    for _ in range(MAX_FAILURES):
        status, _, body = try_login(served, "rita", WRONG)
        assert status == 401 and "Wrong user name or password" in body
    started = time.monotonic()
    status, headers, body = try_login(served, "rita")  # the right password, but refused: too many failures
    assert status == 429 and "Too many failed logins" in body and "try again after" in body
    assert 1 <= int(headers["Retry-After"]) <= 2 and f"({MAX_FAILURES} within {WINDOW_S:g} s)" in body
    assert [a.user for a in live.activity.rows("login-refused")][-1] == "rita"
    time.sleep(max(0.0, WINDOW_S + 0.1 - (time.monotonic() - started)))
    status, _, _ = try_login(served, "rita")
    assert status == 303

    # An address guessing names (unknown ones are logged without the name) is stopped for every name.
    for k in range(MAX_FAILURES):
        assert try_login(served, f"guess{k}", WRONG)[0] == 401
    started = time.monotonic()
    status, _, body = try_login(served, "otto")
    assert status == 429
    assert [a.user for a in live.activity.rows(LOGIN_FAILED)][-MAX_FAILURES:] == [""] * MAX_FAILURES
    time.sleep(max(0.0, WINDOW_S + 0.1 - (time.monotonic() - started)))
    assert try_login(served, "otto")[0] == 303
    db = Path(live.config.db)
    stored = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert WRONG.encode() not in stored and PASSWORD.encode() not in stored and b"guess0" not in stored


# -- an operator in a real browser ---------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser present")
def test_an_operator_watches_a_deployment_live_and_pauses_and_stops_it(live: Live) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    served, did = live.served, live.printing
    driver: Any = chrome()
    wait = WebDriverWait(driver, 10)

    def text_is(element_id: str, value: str) -> Any:
        return expected_conditions.text_to_be_present_in_element((By.ID, element_id), value)

    try:
        driver.get(f"{served.base}/deployment/{did}")
        assert driver.current_url == f"{served.base}/login"
        driver.find_element(By.ID, "username").send_keys("otto")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        wait.until(expected_conditions.url_to_be(f"{served.base}/"))
        driver.get(f"{served.base}/deployments")
        driver.find_element(By.ID, f"deployment-{did}").click()
        wait.until(expected_conditions.url_to_be(f"{served.base}/deployment/{did}"))

        wait.until(text_is("layer", "3"))
        assert driver.find_element(By.ID, "state").text == "printing"
        assert driver.find_element(By.ID, "hotend").text == "205.0 °C (target 205 °C)"
        assert driver.find_element(By.ID, "bed").text == "62.0 °C (target 60 °C)"
        assert driver.find_element(By.ID, "progress").text == "22.0 %"
        assert driver.find_element(By.ID, "layer-count").text == "(5 layers)"
        assert driver.find_element(By.ID, "factors").text == "speed 90 %"
        plot = driver.find_element(By.ID, "temps")
        assert plot.get_attribute("data-points") == "12"
        assert len(plot.find_elements(By.CSS_SELECTOR, "polyline")) == 4
        # Read in one script: the page's poller replaces these rows, so an element found first may be gone
        # (stale) by the time it is read.
        refused = driver.execute_script(
            "const r = document.querySelector('#tuning-rows tr.tuning-verdict');"
            "return ['commands', 'allowed', 'reasons'].map(c => r.querySelector('.' + c).textContent.trim());")
        assert refused[0] == "M104 S290"
        assert refused[1] == "refused"
        assert "outside the live window" in refused[2]
        assert "M220 S90" in driver.find_element(By.ID, "tuning-rows").text
        assert "heater-deviation" in driver.find_element(By.ID, "watchdog-rows").text
        assert not driver.find_element(By.ID, "confirm-form").is_displayed()

        # The deployment writes on; the page follows without a reload.
        live.deployments.event(did, "telemetry", telemetry(layer=4, progress=0.5, hotend_c=205.2))
        wait.until(text_is("layer", "4"))
        assert driver.find_element(By.ID, "progress").text == "50.0 %"
        assert driver.find_element(By.ID, "temps").get_attribute("data-points") == "13"

        for action in ("pause", "estop"):
            button = driver.find_element(By.ID, action)
            button.click()
            wait.until(expected_conditions.url_to_be(f"{served.base}/deployment/{did}?done={action}"))
            assert driver.find_element(By.ID, "done").text.startswith("Requested: ")
            wait.until(text_is("request-rows", action))
            (req,) = [r for r in live.deployments.requests_after(did, 0) if r.action == action]
            assert req.user == "otto"
            (row,) = actions_of(live, "otto", action, "done")
            assert (row.target, row.detail["request_id"], row.detail["sha256"]) == (f"deployment:{did}", req.id,
                                                                                     SHA_FULL)
            assert row.client == "127.0.0.1"
    finally:
        driver.quit()
