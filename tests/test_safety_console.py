"""The approvals store and the approval console: the store on a real SQLite file, the console served by a
real uvicorn on 127.0.0.1, and a person's path through it driven in a real headless Chromium."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.routing import APIRoute

from safety.accounts import AccountError
from safety.approvals import ApprovalError, ApprovalStore, UnknownProgram
from safety.console.__main__ import main as console_main
from safety.console.app import PUBLIC_PATHS, create_app
from safety.console.config import ConsoleConfig
from safety.console.security import SESSION_COOKIE, load_or_create_secret, secret_path

PASSWORD = "correct horse battery"
UPLOAD_LIMIT_MIB = 0.05
"""The served console's body limit in the HTTP tests (about 52 kB), so an oversized upload is cheap."""
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def program(shift_mm: float = 0.0, layers: int = 3) -> bytes:
    """A small complete print on the Ender-3: home, heat, a square outline per layer, cool down."""
    lines = ["G28", "M140 S60", "M104 S200", "M190 S60", "M109 S200", "G92 E0", "G1 Z0.2 F3000"]
    e = 0.0
    for k in range(layers):
        z = 0.2 * (k + 1)
        x0, y0 = 100.0 + shift_mm, 100.0
        lines += [f"G1 Z{z:.2f} F3000", f"G1 X{x0:.2f} Y{y0:.2f} F6000"]
        for x, y in ((x0 + 20, y0), (x0 + 20, y0 + 20), (x0, y0 + 20), (x0, y0)):
            e += 0.8
            lines.append(f"G1 X{x:.2f} Y{y:.2f} E{e:.4f} F1500")
    lines += ["M104 S0", "M140 S0", "G1 Z10 F3000"]
    return ("\n".join(lines) + "\n").encode()


GOOD = program()
EXPERT = program(layers=2)
FORBIDDEN = GOOD.replace(b"G92 E0\n", b"G92 E0\nM42 P13 S255\n")
"""A microcontroller pin driven directly (a heater's, perhaps) in line 7: the validator blocks it."""


@pytest.fixture
def store(tmp_path: Path) -> ApprovalStore:
    s = ApprovalStore(tmp_path / "approvals.db")
    s.accounts.add_user("alice", PASSWORD)
    return s


# -- the store ---------------------------------------------------------------------------------------------
def test_database_is_in_wal_mode_with_the_three_tables(store: ApprovalStore) -> None:
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"users", "programs", "audit"} <= tables
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600  # it holds password hashes


def test_submit_stores_the_validator_verdict_the_simulation_and_the_preview(store: ApprovalStore) -> None:
    pid = store.submit(GOOD, printer="ender3-klipper", job="square", description="three layers",
                       expert_gcode=EXPERT, submitted_by="bot")
    p = store.program(pid)
    assert p.sha256 == hashlib.sha256(GOOD).hexdigest() and p.gcode == GOOD and p.expert_gcode == EXPERT
    assert p.verdict["verdict"] == "allow" and p.verdict["sha256"] == p.sha256
    assert p.report["success"] and p.report["layer_count"] == 3 and p.report["filament_mm"] > 0
    assert p.report["temperatures"]["hotend_c"] > 190
    assert [len(layer["extrude"]) for layer in p.preview["layers"]] == [1, 1, 1]
    assert p.preview["layers"][0]["extrude"][0][:2] == [100.0, 100.0]
    assert p.status == "pending" and [s.id for s in store.pending()] == [pid]

    blocked = store.program(store.submit(FORBIDDEN, printer="ender3-klipper", job="pin"))
    assert blocked.verdict["verdict"] == "block"
    finding = next(v for v in blocked.verdict["violations"] if "M42" in v["command"])
    assert finding["line"] == 7


def test_audit_rows_cannot_be_changed_or_deleted_even_with_raw_sql(store: ApprovalStore) -> None:
    pid = store.submit(GOOD, printer="ender3-klipper", job="square")
    row = store.decide(pid, "alice", "reject", "first try")
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        for sql in ("UPDATE audit SET decision = 'approve'", "UPDATE audit SET comment = 'x' WHERE id = 1",
                    "DELETE FROM audit", f"DELETE FROM audit WHERE id = {row.id}"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql)
        with pytest.raises(sqlite3.IntegrityError, match="cannot be changed"):
            db.execute("UPDATE programs SET gcode = ?, sha256 = ? WHERE id = ?",
                       (b"G28\n", hashlib.sha256(b"G28\n").hexdigest(), pid))
        with pytest.raises(sqlite3.IntegrityError, match="cannot be deleted"):
            db.execute("DELETE FROM programs WHERE id = ?", (pid,))
    assert store.audit() == [row] and not store.is_approved(row.sha256)


def test_an_approval_names_exact_bytes_a_one_byte_change_is_not_approved(store: ApprovalStore) -> None:
    pid = store.submit(GOOD, printer="ender3-klipper", job="square")
    row = store.decide(pid, "alice", "approve", "looks right")
    assert (row.user, row.program_id, row.decision, row.comment) == ("alice", pid, "approve", "looks right")
    assert row.sha256 == hashlib.sha256(GOOD).hexdigest() and row.time_utc.endswith("+00:00")
    assert store.is_approved(row.sha256)
    modified = GOOD.replace(b"S200", b"S201", 1)
    assert len(modified) == len(GOOD)
    assert not store.is_approved(hashlib.sha256(modified).hexdigest())
    assert not store.is_approved(hashlib.sha256(GOOD + b"\n").hexdigest())
    # Submitting the modified copy does not inherit the approval: it waits for its own decision.
    other = store.submit(modified, printer="ender3-klipper", job="square")
    assert [p.id for p in store.pending()] == [other]
    assert not store.is_approved(store.program(other).sha256)


def test_the_latest_decision_for_a_hash_counts(store: ApprovalStore) -> None:
    first = store.submit(GOOD, printer="ender3-klipper", job="square")
    second = store.submit(GOOD, printer="ender3-klipper", job="square again")
    sha = store.program(first).sha256
    assert not store.is_approved(sha)
    store.decide(first, "alice", "approve", "fine")
    assert store.is_approved(sha)
    store.decide(second, "alice", "reject", "on second thought, no")
    assert not store.is_approved(sha)
    assert [r.decision for r in store.audit()] == ["approve", "reject"]


def test_decide_refuses_what_it_must_and_records_nothing(store: ApprovalStore) -> None:
    pid = store.submit(GOOD, printer="ender3-klipper", job="square")
    blocked = store.submit(FORBIDDEN, printer="ender3-klipper", job="pin")
    with pytest.raises(ApprovalError, match="must be one of"):
        store.decide(pid, "alice", "maybe", "hmm")
    with pytest.raises(ApprovalError, match="needs a comment"):
        store.decide(pid, "alice", "approve", "   ")
    with pytest.raises(ApprovalError, match="no such user"):
        store.decide(pid, "mallory", "approve", "trust me")
    with pytest.raises(UnknownProgram):
        store.decide(999, "alice", "approve", "ghost")
    with pytest.raises(ApprovalError, match="validator blocked"):
        store.decide(blocked, "alice", "approve", "override")
    assert store.audit() == []
    store.decide(pid, "alice", "approve", "ok")
    with pytest.raises(ApprovalError, match="not pending: approved by alice"):
        store.decide(pid, "alice", "reject", "changed my mind")
    store.decide(blocked, "alice", "reject", "drives a pin")
    assert [r.decision for r in store.audit()] == ["approve", "reject"] and store.pending() == []


def test_passwords_are_salted_hashes_and_checked(store: ApprovalStore) -> None:
    assert store.accounts.check_password("alice", PASSWORD)
    assert not store.accounts.check_password("alice", PASSWORD + "!")
    assert not store.accounts.check_password("nobody", PASSWORD)
    store.accounts.add_user("bob", PASSWORD)
    with pytest.raises(AccountError, match="already exists"):
        store.accounts.add_user("bob", "another password")
    with pytest.raises(AccountError, match="at least 8"):
        store.accounts.add_user("carol", "short")
    with pytest.raises(AccountError, match="user name"):
        store.accounts.add_user("../etc", PASSWORD)
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        rows = db.execute("SELECT name, salt, password_hash FROM users ORDER BY name").fetchall()
    (_, salt_a, hash_a), (_, salt_b, hash_b) = rows
    assert salt_a != salt_b and hash_a != hash_b  # same password, different salts
    assert PASSWORD.encode() not in hash_a and PASSWORD.encode() not in Path(store.path).read_bytes()


# -- the CLI -------------------------------------------------------------------------------------------
def test_cli_adds_a_user_submits_approves_and_prints_the_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "cli.db")
    gcode = tmp_path / "part.gcode"
    gcode.write_bytes(GOOD)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(PASSWORD + "\n"))
    assert console_main(["adduser", "alice", "--password-stdin", "--db", db]) == 0
    assert ApprovalStore(db).accounts.check_password("alice", PASSWORD)
    assert console_main(["submit", str(gcode), "--printer", "ender3-klipper", "--db", db]) == 0
    assert "program 1 sha256 " + hashlib.sha256(GOOD).hexdigest() in capsys.readouterr().out
    assert console_main(["list", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("1\tpending\tallow\tender3-klipper\t")
    assert console_main(["approve", "1", "--comment", "via script", "--user", "alice", "--db", db]) == 0
    assert console_main(["approve", "1", "--comment", "again", "--user", "alice", "--db", db]) == 2
    assert "not pending" in capsys.readouterr().err
    assert console_main(["audit", "--db", db]) == 0
    assert "\talice\t1\t" + hashlib.sha256(GOOD).hexdigest() + "\tapprove\tvia script" in capsys.readouterr().out
    assert ApprovalStore(db).is_approved(hashlib.sha256(GOOD).hexdigest())


def test_cli_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "cli.db")
    assert console_main(["submit", str(tmp_path / "missing.gcode"), "--printer", "ender3-klipper",
                         "--db", db]) == 2
    assert "No such file" in capsys.readouterr().err
    (tmp_path / "p.gcode").write_bytes(GOOD)
    assert console_main(["submit", str(tmp_path / "p.gcode"), "--printer", "no-such-printer", "--db", db]) == 2
    assert "not a bundled profile" in capsys.readouterr().err
    assert console_main(["reject", "7", "--comment", "x", "--user", "alice", "--db", db]) == 2
    assert console_main(["serve", "--port", "0", "--db", db]) == 2
    assert "port = 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        console_main(["approve", "not-a-number", "--comment", "x", "--user", "alice"])
    assert exc.value.code == 2


def test_the_module_runs_as_a_program(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "safety.console", "list", "--db", str(tmp_path / "m.db")],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_the_secret_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    key = load_or_create_secret(db)
    assert stat.S_IMODE(secret_path(db).stat().st_mode) == 0o600 and len(key) >= 64
    assert load_or_create_secret(db) == key
    secret_path(db).chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        load_or_create_secret(db)


# -- a real server -------------------------------------------------------------------------------------
@dataclass
class Served:
    base: str
    host: str
    port: int
    store: ApprovalStore
    app: object
    programs: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def serve(store: ApprovalStore, config: ConsoleConfig) -> Iterator[Served]:
    """The console of ``store`` served by a real uvicorn on 127.0.0.1 (a free port) while the block runs."""
    app = create_app(store, config, load_or_create_secret(config.db))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", "127.0.0.1", port, store, app)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("console")
    config = ConsoleConfig(db=str(folder / "approvals.db"), max_upload_mib=UPLOAD_LIMIT_MIB)
    store = ApprovalStore(config.db)
    store.accounts.add_user("alice", PASSWORD)
    programs = {name: store.submit(gcode, printer="ender3-klipper", job=name, expert_gcode=EXPERT)
                for name, gcode in (("browser", GOOD), ("http", program(shift_mm=5.0)))}
    with serve(store, config) as s:
        s.programs.update(programs)
        yield s


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: str


def request(served: Served, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, chunked: bool = False) -> Reply:
    """One raw HTTP request (the path is sent exactly as given, no redirects followed)."""
    conn = http.client.HTTPConnection(served.host, served.port, timeout=30)
    try:
        if chunked:
            conn.putrequest(method, path)
            for key, value in (headers or {}).items():
                conn.putheader(key, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            step = 16 * 1024
            try:
                for i in range(0, len(body or b""), step):
                    chunk = (body or b"")[i:i + step]
                    conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server may answer and close before the whole body is sent
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read().decode("utf-8", "replace"))
    finally:
        conn.close()


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def cookie_of(reply: Reply) -> str:
    for header in reply.headers.get_all("Set-Cookie") or []:
        if header.startswith(SESSION_COOKIE + "="):
            return header.split(";", 1)[0]
    raise AssertionError("no session cookie set")


def form(fields: dict[str, str]) -> bytes:
    return urllib.parse.urlencode(fields).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def login(served: Served) -> tuple[str, str]:
    """A logged-in session: (cookie header value, CSRF token)."""
    page = request(served, "GET", "/login")
    anonymous = cookie_of(page)
    reply = request(served, "POST", "/login", form({"username": "alice", "password": PASSWORD,
                                                    "csrf_token": csrf_of(page.body)}),
                    {**FORM, "Cookie": anonymous})
    assert reply.status == 303 and reply.headers["Location"] == "/"
    cookie = cookie_of(reply)
    set_cookie = next(h for h in reply.headers.get_all("Set-Cookie") if h.startswith(SESSION_COOKIE))
    assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
    queue = request(served, "GET", "/", headers={"Cookie": cookie})
    assert queue.status == 200 and "/program/" in queue.body
    return cookie, csrf_of(queue.body)


def test_no_page_is_reachable_without_login(served: Served) -> None:
    routes = [r for r in served.app.routes if isinstance(r, APIRoute)]
    paths = {r.path for r in routes}
    assert {"/", "/programs", "/program/{program_id}", "/program/{program_id}/decision", "/audit",
            "/submit", "/logout", "/login", "/logout-everywhere", "/deployments", "/deployment/{deployment_id}",
            "/deployment/{deployment_id}/live.json", "/deployment/{deployment_id}/request"} <= paths
    pid = str(served.programs["http"])
    forged = SESSION_COOKIE + "=" + "eyJ1c2VyIjoiYWxpY2UiLCJjc3JmIjoieCJ9.AAAAAA.forged"
    checked = 0
    for route in routes:
        if route.path.startswith(PUBLIC_PATHS):
            continue
        path = route.path.replace("{program_id}", pid).replace("{deployment_id}", "1")
        for method in route.methods:
            for headers in ({}, {"Cookie": forged}):
                reply = request(served, method, path, b"" if method == "POST" else None, headers)
                if method == "GET":
                    assert (reply.status, reply.headers["Location"]) == (303, "/login"), (method, path)
                else:
                    assert reply.status == 401, (method, path)
                assert "G28" not in reply.body and "alice" not in reply.body
                checked += 1
    assert checked >= 2 * 14
    # The login page and the stylesheet are the only things a stranger gets.
    assert request(served, "GET", "/login").status == 200
    assert request(served, "GET", "/static/style.css").status == 200
    assert served.store.program(int(pid)).status == "pending"


def test_posts_without_the_sessions_csrf_token_are_refused(served: Served, login: tuple[str, str]) -> None:
    cookie, token = login
    pid = served.programs["http"]
    for fields in ({}, {"csrf_token": ""}, {"csrf_token": "x" * len(token)}, {"csrf_token": token[:-1]}):
        reply = request(served, "POST", f"/program/{pid}/decision",
                        form({"decision": "approve", "comment": "csrf", **fields}), {**FORM, "Cookie": cookie})
        assert reply.status == 403 and "CSRF" in reply.body
        assert request(served, "POST", "/logout", form(fields), {**FORM, "Cookie": cookie}).status == 403
    # Another session's token does not work in this one either.
    login_page = request(served, "GET", "/login")
    reply = request(served, "POST", "/login", form({"username": "alice", "password": PASSWORD,
                                                    "csrf_token": token}),
                    {**FORM, "Cookie": cookie_of(login_page)})
    assert reply.status == 403
    assert request(served, "POST", "/login", form({"username": "alice", "password": PASSWORD}), FORM).status == 403
    assert served.store.program(pid).status == "pending"


@pytest.mark.parametrize("path", [
    "/program/..%2F..%2Fetc%2Fpasswd",
    "/program/../../etc/passwd",
    "/program/%2e%2e/%2e%2e/etc/passwd",
    "/program/1/source?page=..%2F..%2Fetc%2Fpasswd",
    "/program/1%2F..%2F..%2Fetc%2Fpasswd/gcode",
    "/static/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/../../../../../etc/passwd",
    "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2Fapp.py",
    "/static/../app.py",
])
def test_path_traversal_finds_nothing(served: Served, login: tuple[str, str], path: str) -> None:
    reply = request(served, "GET", path, headers={"Cookie": login[0]})
    assert reply.status in (404, 422), (path, reply.status)
    assert "root:" not in reply.body and "create_app" not in reply.body


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = "----layerloop-test-boundary"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def test_uploads_over_the_limit_get_413_and_a_small_one_is_queued(served: Served, login: tuple[str, str]) -> None:
    cookie, token = login
    limit = int(UPLOAD_LIMIT_MIB * 1024 * 1024)
    fields = {"csrf_token": token, "printer": "ender3-klipper", "job": "upload"}
    before = len(served.store.programs())
    huge = GOOD * (limit // len(GOOD) + 2)
    body, ctype = multipart(fields, {"program": ("../../../../tmp/evil.gcode", huge)})
    for chunked in (False, True):
        reply = request(served, "POST", "/submit", body, {"Cookie": cookie, "Content-Type": ctype}, chunked=chunked)
        assert reply.status == 413, chunked
        assert "limited to 0.05 MiB" in reply.body
    assert len(served.store.programs()) == before

    for expert in (("expert.gcode", EXPERT), ("", b"")):  # a browser sends an unchosen file input empty
        body, ctype = multipart(fields, {"program": ("../../../../tmp/evil.gcode", program(shift_mm=10.0)),
                                         "expert": expert})
        reply = request(served, "POST", "/submit", body, {"Cookie": cookie, "Content-Type": ctype})
        assert reply.status == 303 and re.fullmatch(r"/program/\d+", reply.headers["Location"])
        uploaded = served.store.program(int(reply.headers["Location"].rsplit("/", 1)[1]))
        assert uploaded.gcode == program(shift_mm=10.0) and uploaded.expert_gcode == (expert[1] or None)
        assert uploaded.job == "upload" and uploaded.submitted_by == "alice"
    assert len(served.store.programs()) == before + 2
    assert not Path("/tmp/evil.gcode").exists()
    # A printer from the web must be a bundled name, never a path.
    body, ctype = multipart({**fields, "printer": "/etc/passwd"}, {"program": ("p.gcode", GOOD)})
    reply = request(served, "POST", "/submit", body, {"Cookie": cookie, "Content-Type": ctype})
    assert reply.status == 400 and "choose one of" in reply.body and "root:" not in reply.body


def test_program_page_links_findings_to_lines_and_diffs_the_expert(served: Served, login: tuple[str, str]) -> None:
    cookie, token = login
    blocked = served.store.submit(FORBIDDEN, printer="ender3-klipper", job="pin", expert_gcode=GOOD)
    page = request(served, "GET", f"/program/{blocked}?layer=1", headers={"Cookie": cookie})
    assert page.status == 200
    assert "Content-Security-Policy" in page.headers and "script" not in page.body.lower()
    assert re.search(r'<a href="#L7" class="finding-line">7</a>', page.body)
    assert '<tr id="L7"><td class="ln"><a href="#L7">7</a></td><td class="code">M42 P13 S255</td>' in page.body
    assert re.search(r'<tr class="add"><td class="ln"><a href="#L7">7</a></td><td class="code">\+M42 P13 S255</td>',
                     page.body)
    assert 'data-layer="1"' in page.body and 'id="approve"' not in page.body
    reply = request(served, "POST", f"/program/{blocked}/decision",
                    form({"decision": "approve", "comment": "override", "csrf_token": token}),
                    {**FORM, "Cookie": cookie})
    assert reply.status == 409 and "validator blocked" in reply.body
    assert not any(r.program_id == blocked for r in served.store.audit())
    assert request(served, "GET", "/program/99999", headers={"Cookie": cookie}).status == 404


# -- a person in a real browser ------------------------------------------------------------------------
def _browser_missing() -> str:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) or shutil.which(Path(p).name))]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install chromium chromium-driver; scripts/setup.sh does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return ""


def chrome() -> object:
    """A headless Chromium driven by Selenium (the caller quits it)."""
    from selenium import webdriver  # optional: only the browser tests need it (see _browser_missing)
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER if os.path.exists(CHROMEDRIVER)
                                            else shutil.which("chromedriver")), options=options)


@pytest.mark.integration
@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "browser present")
def test_a_reviewer_logs_in_previews_approves_and_sees_the_audit_row(served: Served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver: Any = chrome()
    pid = served.programs["browser"]
    sha = served.store.program(pid).sha256
    try:
        driver.implicitly_wait(5)
        driver.get(f"{served.base}/program/{pid}")
        assert driver.current_url == f"{served.base}/login"
        driver.find_element(By.ID, "username").send_keys("alice")
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "login").click()
        WebDriverWait(driver, 10).until(expected_conditions.url_to_be(f"{served.base}/"))
        assert driver.find_element(By.TAG_NAME, "h1").text == "Pending programs"

        driver.find_element(By.ID, f"program-{pid}").click()
        WebDriverWait(driver, 10).until(expected_conditions.url_to_be(f"{served.base}/program/{pid}"))
        assert driver.find_element(By.ID, "sha256").text == sha
        svg = driver.find_element(By.ID, "toolpath")
        assert svg.get_attribute("data-layer") == "0"
        assert len(svg.find_elements(By.CSS_SELECTOR, "polyline.extrude")) == 1
        driver.find_element(By.ID, "next-layer").click()
        WebDriverWait(driver, 10).until(expected_conditions.staleness_of(svg))
        svg = driver.find_element(By.ID, "toolpath")
        assert svg.get_attribute("data-layer") == "1"
        assert len(svg.find_elements(By.CSS_SELECTOR, "polyline.below")) == 1
        assert svg.size["width"] > 100 and svg.size["height"] > 100

        driver.find_element(By.ID, "comment").send_keys("Square checked layer by layer.")
        approve = driver.find_element(By.ID, "approve")
        approve.click()
        WebDriverWait(driver, 10).until(expected_conditions.staleness_of(approve))
        assert driver.find_element(By.ID, "status").text.startswith("approved by alice")

        driver.get(f"{served.base}/audit")
        row = driver.find_element(By.CSS_SELECTOR, "tr.audit-row")
        assert row.find_element(By.CLASS_NAME, "user").text == "alice"
        assert row.find_element(By.CLASS_NAME, "sha256").text == sha
        assert row.find_element(By.CLASS_NAME, "decision").text == "approve"
        assert row.find_element(By.CLASS_NAME, "comment").text == "Square checked layer by layer."
    finally:
        driver.quit()
    (audit,) = [r for r in served.store.audit() if r.program_id == pid]
    assert (audit.user, audit.sha256, audit.decision) == ("alice", sha, "approve")
    assert served.store.is_approved(sha) and served.store.is_approved(hashlib.sha256(GOOD).hexdigest())
    modified = GOOD.replace(b"X120.00", b"X121.00", 1)
    assert modified != GOOD and not served.store.is_approved(hashlib.sha256(modified).hexdigest())
