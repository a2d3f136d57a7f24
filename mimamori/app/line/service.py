"""What the bot does with each webhook event, with the linked person's own rights (as in the app).

- a text message with a six-digit code from the app links the sender's LINE account to that person;
- a postback from a button acts: 私が行きます claims the alert, 無事でした / 助けが必要 close it after a visit,
  a resident's 無事です / 助けが必要 answers their check, a safety-check answer answers for the household;
  each is recorded on the timeline like an app action, with the channel ``line``;
- every event is acted on once: a redelivery (the same ``webhookEventId``) does nothing again;
- the answer goes back into the chat as a reply (free of the monthly allowance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from mimamori.alerts import line_accounts, resident
from mimamori.alerts import service as alerts_service
from mimamori.app.auth.service import get_person
from mimamori.kernel.clock import Clock
from mimamori.kernel.errors import MimamoriError
from mimamori.safety import service as safety_service

log = logging.getLogger(__name__)

REPLIES = {
    "linked": "連携しました。見守りのお知らせをこのトークでお届けします。",
    "wrong_code": "コードが違うか、有効期限（10分）が切れています。アプリの「連絡先」で新しいコードを出してください。",
    "throttled": "しばらくしてから、もう一度お試しください。",
    "not_linked": "このLINEアカウントはまだ連携されていません。アプリの「連絡先」でコードを出して、このトークに送ってください。",
    "follow": "見守り（mimamori）です。アプリの「連絡先」で出した6桁のコードを、このトークに送ってください。",
    "claim": "ありがとうございます。向かうことをチームに伝えました。",
    "fine": "無事とのこと、記録しました。ありがとうございました。",
    "help": "「助けが必要」と記録し、チームに伝えました。急ぐときは119番へ。",
    "resident_fine": "お返事ありがとうございます。ご無事でよかったです。",
    "resident_help": "チームにすぐ知らせました。急ぐときは119番へ。",
    "safety_safe": "無事とのお返事、ありがとうございます。",
    "safety_help": "チームに知らせました。急ぐときは119番へ。",
    "refused": "この操作はできませんでした（{reason}）。",
    "unknown": "このボタンは使えません。アプリからお確かめください。",
}


@dataclass(frozen=True)
class Handled:
    event_id: str
    outcome: str           # what happened (a REPLIES key, "redelivery", "ignored", "error")
    reply_token: str | None
    reply: str | None


def handle(conn: psycopg.Connection, event: Any, *, clock: Clock) -> Handled:
    """One webhook event, in its own transaction: acted on once, whatever LINE redelivers."""
    event_id = str(getattr(event, "webhook_event_id", "") or "")
    token = getattr(event, "reply_token", None)
    user_id = getattr(getattr(event, "source", None), "user_id", None)
    if not event_id or not user_id:
        return Handled(event_id, "ignored", None, None)  # group events without a user, unknown kinds
    try:
        with conn.transaction():
            if not line_accounts.first_delivery(conn, event_id, clock.now()):
                return Handled(event_id, "redelivery", None, None)
            outcome, reply = _act(conn, event, user_id, clock)
    except MimamoriError as exc:
        # Refused with the person's rights (not theirs to act on, already claimed, closed): nothing was
        # recorded, so a redelivery may try again; the person is told why.
        return Handled(event_id, "refused", token, REPLIES["refused"].format(reason=str(exc)[:80]))
    return Handled(event_id, outcome, token if reply else None, reply)


def _act(conn: psycopg.Connection, event: Any, user_id: str, clock: Clock) -> tuple[str, str | None]:
    # LINE's SDK only when a webhook arrives: importing it takes most of a second of the app's start
    from linebot.v3.webhooks import FollowEvent, MessageEvent, PostbackEvent, TextMessageContent

    from mimamori.alerts.line import PostbackError, parse_postback

    if isinstance(event, FollowEvent):
        return "follow", REPLIES["follow"]
    if isinstance(event, MessageEvent) and isinstance(event.message, TextMessageContent):
        result = line_accounts.redeem_link_code(conn, user_id, event.message.text, clock.now())
        return result.outcome, REPLIES.get(result.outcome)
    if not isinstance(event, PostbackEvent):
        return "ignored", None
    person_id = line_accounts.person_for(conn, user_id)
    if person_id is None:
        return "not_linked", REPLIES["not_linked"]
    try:
        postback = parse_postback(event.postback.data)
    except PostbackError:
        log.warning("line: postback data we did not write, from a linked account")
        return "unknown", REPLIES["unknown"]
    actor = get_person(conn, person_id)
    action = postback.action
    if action == "claim":
        alerts_service.claim(conn, actor, postback.int_id("incident"), clock=clock, channel="line")
    elif action in ("fine", "help"):
        outcome = "fine" if action == "fine" else "needed_help"
        alerts_service.resolve(conn, actor, postback.int_id("incident"), outcome, "", clock=clock, channel="line")
    elif action in ("resident_fine", "resident_help"):
        resident.answer_as_resident(conn, person_id, postback.int_id("incident"), action.removeprefix("resident_"),
                                    clock=clock, channel="line")
    elif action in ("safety_safe", "safety_help"):
        answer = "safe" if action == "safety_safe" else "needs_help"
        safety_service.answer_in_app(conn, actor, postback.int_id("check"), postback.ids["household"], answer,
                                     clock=clock, channel="line")
    return action, REPLIES[action]
