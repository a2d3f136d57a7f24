"""LINE, both ways (issue 16): messages with answer buttons out, and the postbacks they send back in.

LINE Notify ended on 31 March 2025; this is the Messaging API, through LINE's own SDK (``line-bot-sdk``
v3): push and reply messages, profile, quota, and the webhook's signature check (HMAC-SHA256 of the
body with the channel secret, base64, in ``X-Line-Signature``).

What a button sends back is a postback whose data names the action and the object only, e.g.
``v=1&do=claim&incident=42``: no token and no secret. Who acts is the LINE user the (signature-checked)
webhook names, linked beforehand to one person; the action then runs with that person's own rights,
exactly as in the app. A forged or replayed postback can do nothing the person could not do anyway.

Pushes carry ``X-Line-Retry-Key``: the outbox attempt's id as a UUID, so a send retried after a crash
is executed by LINE only once (409 on the retry: already accepted, which counts as sent). Pushes are
counted against the channel's monthly allowance (free plan: 200); replies to a user's message are free.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qs, urlencode

from linebot.v3 import WebhookParser
from linebot.v3.exceptions import InvalidSignatureError
from linebot.v3.messaging import (
    ApiClient,
    ApiException,
    ButtonsTemplate,
    Configuration,
    MessagingApi,
    PostbackAction,
    PushMessageRequest,
    ReplyMessageRequest,
    TemplateMessage,
    TextMessage,
)

from mimamori.kernel import errors

log = logging.getLogger(__name__)

LINE_API = "https://api.line.me"
# LINE's limits on a buttons template (Messaging API reference, "Buttons template").
MAX_BUTTONS_TEXT = 160
MAX_LABEL = 20
MAX_ALT_TEXT = 400
MAX_DATA = 300
POSTBACK_VERSION = "1"

# Postback actions, and the objects each names.
ACTIONS: dict[str, tuple[str, ...]] = {
    "claim": ("incident",),             # 私が行きます
    "fine": ("incident",),              # 無事でした (after a visit): resolves the alert, outcome fine
    "help": ("incident",),              # 助けが必要 (after a visit): resolves as needed_help, the team is told
    "resident_fine": ("incident",),     # the resident: 無事です (cancels the check)
    "resident_help": ("incident",),     # the resident: 助けが必要 (the team is called at once)
    "safety_safe": ("check", "household"),
    "safety_help": ("check", "household"),
}


class LineError(errors.Unavailable):
    """A LINE request failed (status and LINE's message kept for the delivery's record)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"LINE {status}: {message}")
        self.status = status
        self.retryable = status is None or status >= 500 or status == 429


class PostbackError(errors.InvalidInput, ValueError):
    """Postback data we did not write (wrong version, unknown action, missing or malformed ids)."""


@dataclass(frozen=True)
class LineSettings:
    access_token: str
    channel_secret: str
    api_base: str = LINE_API
    monthly_push_budget: int = 200   # the free plan's allowance; `quota()` reads the real one
    warn_at_share: float = 0.8       # a coordinator is told when this share is used


@dataclass(frozen=True)
class Postback:
    action: str
    ids: dict[str, str]

    def encode(self) -> str:
        data = urlencode({"v": POSTBACK_VERSION, "do": self.action, **self.ids})
        if len(data) > MAX_DATA:
            raise PostbackError("postback data over LINE's 300 characters")
        return data

    def int_id(self, name: str) -> int:
        return int(self.ids[name])


def parse_postback(data: str) -> Postback:
    """Read postback data back; anything we did not write is refused with a reason."""
    if len(data) > MAX_DATA:
        raise PostbackError("postback data too long")
    fields = {k: v[0] for k, v in parse_qs(data, strict_parsing=False, max_num_fields=8).items()}
    if fields.pop("v", None) != POSTBACK_VERSION:
        raise PostbackError("not a mimamori postback (version)")
    action = fields.pop("do", "")
    if action not in ACTIONS:
        raise PostbackError(f"unknown action {action!r}")
    needed = ACTIONS[action]
    if set(fields) != set(needed):
        raise PostbackError(f"{action} names {', '.join(needed)}")
    for name in needed:
        value = fields[name]
        if name in ("incident", "check") and not (value.isascii() and value.isdigit() and len(value) <= 18):
            raise PostbackError(f"{name} is a number")
        if name == "household" and not (0 < len(value) <= 64 and value.isprintable()):
            raise PostbackError("household id")
    return Postback(action, fields)


# -- messages (pure) ------------------------------------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _buttons(alt_text: str, text: str, buttons: Sequence[tuple[str, Postback]]) -> TemplateMessage:
    actions = [PostbackAction(label=_clip(label, MAX_LABEL), data=pb.encode(), displayText=label) for label, pb in buttons]
    return TemplateMessage(altText=_clip(alt_text, MAX_ALT_TEXT),
                           template=ButtonsTemplate(text=_clip(text, MAX_BUTTONS_TEXT), actions=actions))


def alert_message(text: str, incident_id: int) -> TemplateMessage:
    """A welfare alert to a team member: the words of the alert, and 私が行きます / 無事でした / 助けが必要."""
    ids = {"incident": str(incident_id)}
    return _buttons(text, text, [("私が行きます", Postback("claim", ids)), ("無事でした", Postback("fine", ids)),
                                 ("助けが必要", Postback("help", ids))])


def resident_check_message(text: str, incident_id: int) -> TemplateMessage:
    """The resident is asked first: 無事です / 助けが必要."""
    ids = {"incident": str(incident_id)}
    return _buttons(text, text, [("無事です", Postback("resident_fine", ids)), ("助けが必要", Postback("resident_help", ids))])


def safety_check_message(text: str, check_id: int, household_id: str) -> TemplateMessage:
    """An area safety check (安否確認) to a resident: 無事です / 助けが必要."""
    ids = {"check": str(check_id), "household": household_id}
    return _buttons(text, text, [("無事です", Postback("safety_safe", ids)), ("助けが必要", Postback("safety_help", ids))])


def text_message(text: str) -> TextMessage:
    return TextMessage(text=_clip(text, 5000))


def retry_key(attempt_id: str | int) -> str:
    """A stable UUID for one delivery attempt (LINE wants a hexadecimal UUID): a retry of the same attempt
    reuses it, so LINE executes the push once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"mimamori:line:{attempt_id}"))


# -- the client (I/O) -----------------------------------------------------------------------------------------


class LineClient:
    """The Messaging API for one channel. ``api_base`` points at LINE (or, in tests, at a local server
    that implements the documented endpoints); the code path is the same."""

    def __init__(self, settings: LineSettings) -> None:
        self.settings = settings
        self._api = ApiClient(Configuration(host=settings.api_base.rstrip("/"), access_token=settings.access_token))
        self.messaging = MessagingApi(self._api)

    def close(self) -> None:
        self._api.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(self, to: str, messages: Sequence[Any], *, attempt_id: str | int) -> str:
        """Push to a user or group. Returns "sent", or "already_sent" when LINE had accepted this attempt
        before (409 on the retry key). Raises ``LineError`` otherwise (``retryable`` for 5xx/429/network)."""
        try:
            self.messaging.push_message(PushMessageRequest(to=to, messages=list(messages)),
                                        x_line_retry_key=retry_key(attempt_id))
        except ApiException as exc:
            if exc.status == 409:
                return "already_sent"
            raise LineError(exc.status, _reason(exc)) from exc
        except OSError as exc:  # the connection: LINE may or may not have it; the retry key makes a retry safe
            raise LineError(None, str(exc)) from exc
        return "sent"

    def reply(self, reply_token: str, messages: Sequence[Any]) -> None:
        """Answer in the chat (free; a reply token is good once, for a short while)."""
        try:
            self.messaging.reply_message(ReplyMessageRequest(replyToken=reply_token, messages=list(messages)))
        except ApiException as exc:
            raise LineError(exc.status, _reason(exc)) from exc

    def display_name(self, user_id: str) -> str | None:
        try:
            return self.messaging.get_profile(user_id).display_name
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise LineError(exc.status, _reason(exc)) from exc

    def quota(self) -> tuple[int | None, int]:
        """(the month's push allowance, or None when unlimited; pushes used this month)."""
        try:
            limit = self.messaging.get_message_quota()
            used = self.messaging.get_message_quota_consumption()
        except ApiException as exc:
            raise LineError(exc.status, _reason(exc)) from exc
        return (limit.value if limit.type == "limited" else None), int(used.total_usage)


def _reason(exc: ApiException) -> str:
    body = exc.body if isinstance(exc.body, str) else ""
    return (body or exc.reason or "error")[:300]


def parse_webhook(body: str, signature: str, channel_secret: str) -> list[Any]:
    """The webhook's events, after checking ``X-Line-Signature``. Raises ``InvalidSignatureError`` for a
    forged or altered body (the route answers 400 and does nothing)."""
    if not signature:
        raise InvalidSignatureError("no X-Line-Signature")
    return list(WebhookParser(channel_secret).parse(body, signature))


# -- the outbox's LINE channel -------------------------------------------------------------------------------


def line_messages(row: Mapping[str, Any], payload: Mapping[str, Any]) -> list[Any]:
    """What one outbox row says on LINE: its words, with the buttons that answer it where there are any.
    A long text goes first as its own bubble, then the buttons (one push: one message on LINE's count)."""
    text = "\n".join(part for part in (str(payload.get("title") or ""), str(payload.get("body") or "")) if part)
    buttons: TemplateMessage | None = None
    prompt = text if len(text) <= MAX_BUTTONS_TEXT else "ボタンでお知らせください"
    if row.get("source") == "alert" and row.get("notice") == "alert" and row.get("incident_id"):
        buttons = alert_message(prompt, int(row["incident_id"]))
    elif row.get("notice") == "resident_check" and row.get("incident_id"):
        buttons = resident_check_message(prompt, int(row["incident_id"]))
    elif row.get("source") == "safety" and payload.get("household_id") and row.get("check_id"):
        buttons = safety_check_message(prompt, int(row["check_id"]), str(payload["household_id"]))
    if buttons is None:
        return [text_message(text or "見守り（mimamori）からのお知らせ")]
    if buttons.alt_text != text:
        buttons.alt_text = _clip(text, MAX_ALT_TEXT)
    return [buttons] if prompt == text else [text_message(text), buttons]


class LineSender:
    """The outbox's ``line`` channel: the target is the person's linked LINE user id. The retry key is the
    outbox row's id, the same for every attempt of that row: a send repeated after a crash (the outbox's
    "in doubt") is executed by LINE once and answers 409, which counts as sent."""

    def __init__(self, settings: LineSettings, *, database_url: str | None = None, clock: Any = None) -> None:
        self.settings = settings
        self._client: LineClient | None = None
        # where accepted pushes are counted against the month's allowance (None: not counted)
        self._database_url = database_url
        self._clock = clock

    def send(self, row: Mapping[str, Any], payload: Mapping[str, Any]) -> tuple[bool, str | None, bool]:
        """(ok, error or note, permanent)."""
        if self._client is None:
            self._client = LineClient(self.settings)
        try:
            outcome = self._client.push(str(row["target"]), line_messages(row, payload),
                                        attempt_id=f"outbox-{row['delivery_id']}")
        except LineError as exc:
            return False, str(exc), not exc.retryable
        if outcome == "sent":
            self._count()
        return True, None if outcome == "sent" else "LINE had accepted it already (retry key)", False

    def _count(self) -> None:
        if self._database_url is None or self._clock is None:
            return
        import psycopg

        from mimamori.alerts.line_accounts import record_push

        try:
            with psycopg.connect(self._database_url, autocommit=True) as conn:
                record_push(conn, self._clock.now(), allowance=self.settings.monthly_push_budget,
                            warn_at_share=self.settings.warn_at_share)
        except psycopg.Error as exc:  # the message went out; only the count is late
            log.warning("line: the push could not be counted: %s", exc)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
