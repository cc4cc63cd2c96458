"""The approval console's web application: server-rendered pages over an :class:`ApprovalStore`.

Routes (all but ``/login`` and ``/static`` need a logged-in user; every POST needs the session's CSRF
token): ``GET /`` the queue of pending programs, ``GET /programs`` all programs, ``GET /program/{id}`` one
program (preview, simulation, findings, diff, decision form), ``GET /program/{id}/source`` its numbered
listing page by page, ``GET /program/{id}/gcode`` its bytes, ``POST /program/{id}/decision``,
``GET|POST /submit``, ``GET /audit``, ``GET|POST /login``, ``POST /logout``. Program ids are integers; no
route takes a file name or path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException

from safety.approvals import ApprovalError, ApprovalStore, Program, UnknownProgram
from safety.console.config import ConsoleConfig
from safety.console.preview import (
    LISTING_PAGE_LINES,
    expert_diff,
    gcode_lines,
    layer_svg,
    line_href,
    temperature_svg,
)
from safety.console.security import CSRF_FIELD, SESSION_COOKIE, BodyLimit, Session, Sessions, csrf_ok
from sim_bridge.printers import bundled_printers

HERE = Path(__file__).parent
PUBLIC_PATHS = ("/login", "/static")
"""Path prefixes served without a login."""
SECURITY_HEADERS = {
    # No script, no external resource, no framing: the console loads only its own stylesheet.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class LoginRequired(Exception):
    """The request needs a logged-in user and has none."""


def session_of(request: Request) -> Session | None:
    """The request's session, if its cookie carries a valid one."""
    sessions: Sessions = request.app.state.sessions
    return sessions.read(request.cookies.get(SESSION_COOKIE))


def require_user(request: Request) -> Session:
    """The logged-in user's session; :class:`LoginRequired` otherwise."""
    session = session_of(request)
    store: ApprovalStore = request.app.state.store
    # A deleted user's cookie stops working at once, not when it expires.
    if session is None or session.user is None or not store.accounts.has_user(session.user):
        raise LoginRequired
    return session


CurrentUser = Annotated[Session, Depends(require_user)]
FormText = Annotated[str, Form()]
OptionalFile = Annotated[UploadFile | None, File()]


def create_app(store: ApprovalStore, config: ConsoleConfig, secret: bytes) -> FastAPI:
    """The console for one store. ``secret`` signs the session cookies
    (:func:`~safety.console.security.load_or_create_secret`)."""
    app = FastAPI(title="layerloop approval console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    sessions = Sessions(secret, config.session_max_age_s)
    app.state.sessions = sessions
    app.state.store = store
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))

    def render(name: str, request: Request, session: Session | None, status_code: int = 200,
               **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, session=session, csrf_field=CSRF_FIELD,
                                             **context)
        return HTMLResponse(html, status_code=status_code)

    def set_session(response: Response, cookie: str) -> None:
        response.set_cookie(SESSION_COOKIE, cookie, max_age=config.session_max_age_s, path="/",
                            httponly=True, samesite="strict", secure=config.secure_cookie)

    def require_csrf(session: Session, token: str) -> None:
        if not csrf_ok(session, token):
            raise HTTPException(403, "Missing or wrong CSRF token: reload the page and try again.")

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        # A write from a stranger is refused before its body is read, so uploads need a login too.
        if request.method not in ("GET", "HEAD") and not request.url.path.startswith(PUBLIC_PATHS):
            session = session_of(request)
            if session is None or session.user is None:
                return PlainTextResponse("401 Unauthorized: log in first.", status_code=401)
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    # Outermost, so an oversized body is refused before anything else reads it.
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if request.method in ("GET", "HEAD"):
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("401 Unauthorized: log in first.", status_code=401)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return render("error.html", request, None, status_code=exc.status_code, status=exc.status_code,
                      message=exc.detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, _exc: RequestValidationError) -> Response:
        # Not FastAPI's default, which echoes the offending input back.
        return render("error.html", request, None, status_code=422, status=422,
                      message="Malformed request: program ids and layer numbers are whole numbers.")

    # -- login -----------------------------------------------------------------------------------------
    @app.get("/login")
    def login_form(request: Request) -> Response:
        session = session_of(request)
        if session is not None and session.user is not None and store.accounts.has_user(session.user):
            return RedirectResponse("/", status_code=303)
        anonymous, cookie = sessions.new(None)
        response = render("login.html", request, anonymous, error="")
        set_session(response, cookie)
        return response

    @app.post("/login")
    def login(request: Request, username: FormText = "", password: FormText = "",
              csrf_token: FormText = "") -> Response:
        session = session_of(request)
        if session is None:
            raise HTTPException(403, "Your login form expired: reload the login page.")
        require_csrf(session, csrf_token)
        if not store.accounts.check_password(username, password):
            return render("login.html", request, session, status_code=401, error="Wrong user name or password.")
        # A new session (and CSRF token) at login, so a token seen before login is worth nothing after.
        _, cookie = sessions.new(username)
        response = RedirectResponse("/", status_code=303)
        set_session(response, cookie)
        return response

    @app.post("/logout")
    def logout(request: Request, session: CurrentUser, csrf_token: FormText = "") -> Response:
        require_csrf(session, csrf_token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # -- pages -----------------------------------------------------------------------------------------
    @app.get("/")
    def queue(request: Request, session: CurrentUser) -> Response:
        return render("queue.html", request, session, title="Pending programs", programs=store.pending(),
                      show_all=False)

    @app.get("/programs")
    def all_programs(request: Request, session: CurrentUser) -> Response:
        return render("queue.html", request, session, title="All programs", programs=store.programs(),
                      show_all=True)

    def load(program_id: int) -> Program:
        try:
            return store.program(program_id)
        except UnknownProgram:
            raise HTTPException(404, f"No program {program_id}.") from None

    @app.get("/program/{program_id}")
    def program_page(request: Request, program_id: int, session: CurrentUser, layer: int = 0) -> Response:
        return render_program(request, session, load(program_id), layer)

    def render_program(request: Request, session: Session, p: Program, layer: int, error: str = "",
                       comment: str = "", status_code: int = 200) -> Response:
        lines = gcode_lines(p.gcode)
        layers = p.preview.get("layers") or []
        position = min(max(layer, 0), max(len(layers) - 1, 0))
        expert = None if p.expert_gcode is None else gcode_lines(p.expert_gcode)
        failures_here = [f for f in p.report.get("failures", [])
                         if layers and f.get("layer") == layers[position]["index"]]
        return render(
            "program.html", request, session, status_code=status_code, p=p, lines=lines,
            inline_listing=len(lines) <= LISTING_PAGE_LINES, href=lambda n: line_href(p.id, n, len(lines)),
            layers=layers, position=position, svg=layer_svg(p.preview, position) if layers else None,
            failures_here=failures_here, temps=temperature_svg(p.preview.get("traces") or {}),
            diff=expert_diff(lines, expert), error=error, comment=comment,
            pages=math.ceil(len(lines) / LISTING_PAGE_LINES))

    @app.get("/program/{program_id}/source")
    def source(request: Request, program_id: int, session: CurrentUser, page: int = 0) -> Response:
        p = load(program_id)
        lines = gcode_lines(p.gcode)
        pages = max(1, math.ceil(len(lines) / LISTING_PAGE_LINES))
        if not 0 <= page < pages:
            raise HTTPException(404, f"Program {p.id} has listing pages 0 to {pages - 1}.")
        first = page * LISTING_PAGE_LINES
        return render("source.html", request, session, p=p, lines=lines[first:first + LISTING_PAGE_LINES],
                      first_line=first + 1, page=page, pages=pages)

    @app.get("/program/{program_id}/gcode")
    def download(program_id: int, session: CurrentUser) -> Response:
        p = load(program_id)
        return Response(p.gcode, media_type="text/plain; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="program-{p.id}-{p.sha256[:12]}.gcode"'})

    @app.post("/program/{program_id}/decision")
    def decide(request: Request, program_id: int, session: CurrentUser,
               decision: FormText = "", comment: FormText = "", csrf_token: FormText = "") -> Response:
        require_csrf(session, csrf_token)
        p = load(program_id)
        try:
            store.decide(p.id, session.user or "", decision, comment)
        except ApprovalError as exc:
            return render_program(request, session, p, 0, error=str(exc), comment=comment, status_code=409)
        return RedirectResponse(f"/program/{p.id}", status_code=303)

    @app.get("/audit")
    def audit(request: Request, session: CurrentUser) -> Response:
        return render("audit.html", request, session, rows=list(reversed(store.audit())))

    @app.get("/submit")
    def submit_form(request: Request, session: CurrentUser) -> Response:
        return render("submit.html", request, session, printers=bundled_printers(), error="",
                      max_mib=config.max_upload_mib, form={})

    @app.post("/submit")
    async def submit(request: Request, session: CurrentUser,
                     program: OptionalFile = None, expert: OptionalFile = None,
                     printer: FormText = "", job: FormText = "", description: FormText = "",
                     csrf_token: FormText = "") -> Response:
        require_csrf(session, csrf_token)
        form = {"printer": printer, "job": job, "description": description}

        def again(message: str, status_code: int) -> Response:
            return render("submit.html", request, session, status_code=status_code, printers=bundled_printers(),
                          error=message, max_mib=config.max_upload_mib, form=form)

        # Only bundled profiles: a profile name from the web must never become a path on this machine.
        if printer not in bundled_printers():
            return again(f"Printer {printer!r}: choose one of {', '.join(bundled_printers())}.", 400)
        gcode = await program.read() if program is not None else b""
        if not gcode:
            return again("Choose a G-code file to submit.", 400)
        expert_gcode = (await expert.read() or None) if expert is not None else None
        try:
            program_id = await run_in_threadpool(
                store.submit, gcode, printer=printer, job=job, description=description,
                expert_gcode=expert_gcode, submitted_by=session.user or "")
        except ApprovalError as exc:
            return again(str(exc), 400)
        return RedirectResponse(f"/program/{program_id}", status_code=303)

    return app
