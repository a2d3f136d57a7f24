"""Thin routers for sign-in, sign-out, language and invitations (API and pages)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from mimamori.app import metrics
from mimamori.app.auth import csrf, service
from mimamori.app.auth.csrf import CsrfFailed
from mimamori.app.auth.deps import SESSION_COOKIE, CurrentPerson, OptionalPerson, session_token
from mimamori.app.auth.models import AcceptIn, InvitationIn, InvitationOut, LoginIn, PersonOut, SessionOut
from mimamori.app.auth.proxy import client_address, is_https
from mimamori.app.db import ClockDep, Conn
from mimamori.app.i18n import LANG_COOKIE, LOCALES, request_locale, translate
from mimamori.app.templating import render
from mimamori.kernel.errors import MimamoriError, NotAuthenticated, RateLimited

api = APIRouter(prefix="/api", tags=["auth"])
#: Login CSRF (there is no session yet): the sign-in and invitation forms carry a token signed with
#: the service secret and bound to a pre-session id kept in a cookie (app.auth.csrf). The JSON login
#: needs none: it takes only a JSON body, which a cross-site form cannot send, and API clients use
#: the bearer token it returns.
pages = APIRouter(include_in_schema=False)


def _client(request: Request) -> str:
    return client_address(request)  # behind a trusted proxy: the address it saw (issue 17)


def _set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(SESSION_COOKIE, token, max_age=int(service.SESSION_TTL.total_seconds()), httponly=True,
                        samesite="lax", secure=is_https(request), path="/")


def _safe_next(value: str | None) -> str:
    # Only same-site paths: no open redirect.
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/"


# --- API ----------------------------------------------------------------------------------------


@api.post("/auth/login", response_model=SessionOut, responses={401: {}, 429: {}})
def api_login(body: LoginIn, request: Request, response: Response, conn: Conn, clock: ClockDep) -> SessionOut:
    try:
        token, person = service.login(conn, clock, body.login, body.password, client=_client(request),
                                      user_agent=request.headers.get("user-agent"))
    except (RateLimited, NotAuthenticated) as exc:
        metrics.LOGIN_FAILURES.labels("rate_limited" if isinstance(exc, RateLimited) else "wrong_login").inc()
        raise
    _set_session_cookie(request, response, token)
    return SessionOut(person_id=person.person_id, display_name=person.display_name, role=person.role,
                      csrf_token=csrf.issue(request.app.state.csrf_signer, csrf.SESSION, token), token=token)


@api.post("/auth/logout", status_code=204, responses={401: {}, 403: {}})
def api_logout(request: Request, _person: CurrentPerson, conn: Conn) -> Response:
    token, _ = session_token(request)
    service.logout(conn, token or "")
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@api.post("/auth/logout-all", responses={401: {}, 403: {}})
def api_logout_all(person: CurrentPerson, conn: Conn) -> dict[str, int]:
    return {"sessions_ended": service.logout_everywhere(conn, person)}


@api.get("/me", response_model=PersonOut, responses={401: {}})
def api_me(person: CurrentPerson) -> PersonOut:
    return PersonOut(**person.as_json())


@api.post("/invitations", response_model=InvitationOut, status_code=201, responses={401: {}, 403: {}, 404: {}, 422: {}})
def api_invite(body: InvitationIn, request: Request, person: CurrentPerson, conn: Conn, clock: ClockDep) -> InvitationOut:
    token, expires = service.create_invitation(conn, clock, person, role=body.role, display_name=body.display_name,
                                               household_id=body.household_id, area=body.area, tier=body.tier,
                                               relation=body.relation)
    return InvitationOut(token=token, url=str(request.url_for("invite_page", token=token)), expires_at=expires.isoformat())


@api.post("/invitations/{token}/accept", response_model=PersonOut, status_code=201, responses={404: {}, 409: {}, 422: {}, 429: {}})
def api_accept(token: str, body: AcceptIn, request: Request, conn: Conn, clock: ClockDep) -> PersonOut:
    person = service.accept_invitation(conn, clock, token, login_name=body.login, password=body.password,
                                       locale=body.locale, consent=body.consent, client=_client(request))
    return PersonOut(**person.as_json())


# --- pages --------------------------------------------------------------------------------------


def _pre_session(request: Request) -> str:
    """The browser's pre-session id (kept while it lasts, so two open forms both work), or a new one."""
    current = request.cookies.get(csrf.PRE_SESSION_COOKIE, "")
    return current if 20 <= len(current) <= 64 else csrf.new_pre_session()


def _with_pre_session(request: Request, name: str, status_code: int = 200, **ctx: object) -> Response:
    """Render a form that starts a session, with a pre-session cookie and its signed token."""
    pre = _pre_session(request)
    token = csrf.issue(request.app.state.csrf_signer, csrf.PRE_SESSION, pre)
    response = render(request, name, status_code=status_code, form_csrf=token, **ctx)
    response.set_cookie(csrf.PRE_SESSION_COOKIE, pre, max_age=csrf.PRE_SESSION_MAX_AGE, httponly=True,
                        samesite="strict", secure=is_https(request), path="/")
    return response


def _check_pre_session(request: Request, sent: str) -> str | None:
    """None when the form's token is good, else the refusal's reason."""
    try:
        csrf.verify(request.app.state.csrf_signer, csrf.PRE_SESSION, request.cookies.get(csrf.PRE_SESSION_COOKIE),
                    sent, max_age=csrf.PRE_SESSION_MAX_AGE)
    except CsrfFailed as exc:
        return str(exc.detail["reason"])
    return None


def _form_refused(request: Request, reason: str, key: str = "login_form_expired") -> str:
    locale = request_locale(request)
    return f"{translate(locale, key)} ({translate(locale, 'csrf_reason_' + reason)})"


def _login_form(request: Request, status_code: int = 200, **ctx: object) -> Response:
    return _with_pre_session(request, "login.html", status_code=status_code, **ctx)


@pages.get("/login")
def login_page(request: Request, person: OptionalPerson,
               next_path: Annotated[str | None, Query(alias="next")] = None) -> Response:
    if person is not None:
        return RedirectResponse(_safe_next(next_path), status_code=303)
    return _login_form(request, next=_safe_next(next_path))


@pages.post("/login")
async def login_submit(request: Request, login: Annotated[str, Form(max_length=64)],
                       password: Annotated[str, Form(max_length=256)],
                       next_path: Annotated[str, Form(alias="next")] = "/",
                       csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    app = request.app
    refused = _check_pre_session(request, csrf_token)
    if refused is not None:
        # Refused before the password is even checked; the page offers a fresh form.
        metrics.LOGIN_FAILURES.labels("csrf").inc()
        return _login_form(request, status_code=403, error=_form_refused(request, refused), login=login,
                           next=_safe_next(next_path))

    def attempt() -> tuple[str, str] | str:
        with app.state.pool.connection() as conn:
            conn.autocommit = True
            try:
                token, _p = service.login(conn, app.state.clock, login, password.replace("\x00", ""),
                                                 client=_client(request), user_agent=request.headers.get("user-agent"))
            except RateLimited:
                return "rate_limited"
            except NotAuthenticated:
                return "wrong_login"
            return token, _p.locale

    result = await run_in_threadpool(attempt)
    if isinstance(result, str):
        locale = request_locale(request)
        metrics.LOGIN_FAILURES.labels(result).inc()
        status = 429 if result == "rate_limited" else 401
        return _login_form(request, status_code=status, error=translate(locale, result), login=login,
                           next=_safe_next(next_path))
    response = RedirectResponse(_safe_next(next_path), status_code=303)
    _set_session_cookie(request, response, result[0])
    response.delete_cookie(csrf.PRE_SESSION_COOKIE, path="/")
    response.set_cookie(LANG_COOKIE, result[1], max_age=365 * 86400, samesite="lax", path="/")
    return response


@pages.post("/logout")
def logout_submit(request: Request, _person: CurrentPerson, conn: Conn) -> Response:
    token, _ = session_token(request)
    service.logout(conn, token or "")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@pages.post("/logout-all")
def logout_all_submit(person: CurrentPerson, conn: Conn) -> Response:
    service.logout_everywhere(conn, person)
    response = RedirectResponse("/login?msg=signed_out_everywhere", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@pages.get("/lang/{code}")
def switch_language(code: str, request: Request, person: OptionalPerson, conn: Conn) -> Response:
    if code not in LOCALES:
        code = "ja"
    if person is not None:
        service.set_locale(conn, person, code)
    referer = request.headers.get("referer", "/")
    target = "/"
    if referer.startswith(str(request.base_url)):
        target = _safe_next("/" + referer[len(str(request.base_url)):])
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", path="/")
    return response


@pages.get("/invite/{token}", name="invite_page")
def invite_page(token: str, request: Request, conn: Conn, clock: ClockDep) -> Response:
    inv = service.get_invitation(conn, clock, token)
    return _with_pre_session(request, "invite.html", inv=inv, token=token, notice_version=service.NOTICE_VERSION)


@pages.post("/invite/{token}")
def invite_submit(token: str, request: Request, conn: Conn, clock: ClockDep,
                  login: Annotated[str, Form(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9_.@+-]+$")],
                  password: Annotated[str, Form(min_length=8, max_length=256)],
                  locale: Annotated[str, Form()] = "ja", consent: Annotated[str | None, Form()] = None,
                  csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    inv = service.get_invitation(conn, clock, token)
    refused = _check_pre_session(request, csrf_token)
    if refused is not None:
        return _with_pre_session(request, "invite.html", status_code=403, inv=inv, token=token,
                                 notice_version=service.NOTICE_VERSION,
                                 error=_form_refused(request, refused, "err_csrf_failed"))
    try:
        person = service.accept_invitation(conn, clock, token, login_name=login, password=password.replace("\x00", ""),
                                           locale=locale if locale in LOCALES else "ja", consent=bool(consent),
                                           client=_client(request))
    except MimamoriError as exc:
        return _with_pre_session(request, "invite.html", status_code=exc.status_code, inv=inv, token=token,
                                 notice_version=service.NOTICE_VERSION,
                                 error=translate(request_locale(request), f"err_{exc.code}"))
    session = service.start_session(conn, clock, person.person_id, user_agent=request.headers.get("user-agent"))
    # first stop: where their notices should go (an e-mail address, this phone)
    response = RedirectResponse("/contacts?msg=welcome_contacts", status_code=303)
    _set_session_cookie(request, response, session)
    response.delete_cookie(csrf.PRE_SESSION_COOKIE, path="/")
    response.set_cookie(LANG_COOKIE, person.locale, max_age=365 * 86400, samesite="lax", path="/")
    return response


def login_redirect(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
