"""Data shapes of the alert engine, its errors, and the texts of its notices."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from mimamori.kernel import contract, errors

STATUSES: Final = ("open", "claimed", "resolved", "cancelled")  # contract.INCIDENT_STATUSES, in display order
#: Outcomes a person may report when resolving (the engine itself also uses resident_responded).
OUTCOMES: Final = contract.TEAM_OUTCOMES
WELFARE_KINDS: Final = contract.WELFARE_KINDS
ACTIVITY_KINDS: Final = ("on", "off", "motion", "open", "close")


class ActorLike(Protocol):
    """Whoever acts: the app's ``Person`` fits (person_id, role, area)."""

    @property
    def person_id(self) -> str: ...

    @property
    def role(self) -> str: ...

    @property
    def area(self) -> str | None: ...


@dataclass(frozen=True)
class Actor:
    person_id: str
    role: str
    area: str | None = None
    display_name: str = ""
    locale: str = "ja"


class AlertError(errors.MimamoriError):
    """Base of the alert engine's errors (each is also a kind of ``mimamori.kernel.errors``, which gives its HTTP status)."""


class NotFound(AlertError, errors.NotFound):
    """No such incident or household, or not one the actor may see (existence does not leak)."""


class Forbidden(AlertError, errors.Forbidden):
    """The actor may see this but not do this."""


class Conflict(AlertError, errors.Conflict):
    """The incident is not in a state that allows this (e.g. already claimed)."""


class InvalidInput(AlertError, errors.InvalidInput):
    """A bad outcome, an empty comment, an invalid chain ..."""


@dataclass(frozen=True)
class IncidentView:
    incident_id: int
    household_id: str | None
    household_name: str | None
    area: str | None
    kind: str
    status: str
    opened_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    claimed_by: str | None
    closed_at: datetime | None
    closed_by: str | None
    outcome: str | None
    outcome_note: str | None
    escalation_status: str | None = None
    next_step_at: datetime | None = None


@dataclass(frozen=True)
class TimelineEntry:
    entry_id: int
    incident_id: int
    at: datetime
    actor: str | None
    actor_name: str | None
    action: str
    channel: str
    body: str | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    notification_id: int
    person_id: str
    incident_id: int | None
    notice: str
    urgent: bool
    title: str
    body: str
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


# --- notice texts (Japanese first) ------------------------------------------------------------

_KIND_TEXT: Final = {
    "ja": {
        "inactivity": "いつもの時間に照明やセンサーの動きがありません",
        "long_on": "照明が長時間つけっぱなしです",
        "device_offline": "機器がオフラインです",
        "area_outage": "地域のゲートウェイが停止しています",
    },
    "en": {
        "inactivity": "No lights or sensors have been used as usual",
        "long_on": "A light has been on for unusually long",
        "device_offline": "A device is offline",
        "area_outage": "Gateways in the area are offline",
    },
}

_NOTICE_TEXT: Final = {
    "ja": {
        "alert": ("見守りアラート: {name}さん", "{kind}。アプリで「確認に行きます」を押してください。"),
        "claimed": ("{name}さん: {by}さんが確認に行きます", "{by}さんが対応します。エスカレーションは止まりました。"),
        "resolved": ("{name}さん: 対応が完了しました", "結果: {outcome}。{note}"),
        "cancelled": ("{name}さん: アラートは取り消されました", "{note}"),
        "comment": ("{name}さん: {by}さんのコメント", "{note}"),
        "unreachable": ("連絡できない見守り担当者がいます", "{person}さんにどの通知手段でも届きませんでした({name}さんのアラート)。"),
        "device_task": ("機器の点検依頼: {name}さん宅", "{note}"),
        "technical": ("機器の問題: {name}", "{kind}。"),
        "claim_reminder": ("{name}さん: 確認はどうなりましたか", "{by}さんが確認に行くと押してから時間がたちました。結果をアプリで報告してください。まもなく他の担当者にも再通知されます。"),  # noqa: E501
        "reopened": ("{name}さん: 確認が終わっていません", "{by}さんの確認が報告されないため、アラートを再開しました。アプリで「確認に行きます」を押してください。"),
        "resident_check": ("見守りからの確認: お変わりありませんか", "{name}さん、いつもの時間に照明やセンサーの動きがありません。お変わりなければ、このリンクから一度押してください（{minutes}分以内に返事がないと見守りの方に連絡します）: {url}"),  # noqa: E501
        "test": ("見守り: テスト送信", "見守りのお知らせがこの連絡先に届くことを確かめるためのテストです。返信は不要です。"),
        "resident_answered_fine": ("{name}さん: ご本人から「大丈夫」と返事がありました", "{by}さんが見守りの確認に「大丈夫です」と答えました。"),
        "resident_answered_away": ("{name}さん: ご本人はお出かけ中です", "{by}さんが見守りの確認に「出かけています」と答えました。戻られるまで見守りを休止します。"),
        "resident_answered_help": ("{name}さん: ご本人が助けを求めています", "{by}さんが見守りの確認に「助けてほしい」と答えました。すぐに確認に行ってください。"),
    },
    "en": {
        "alert": ("Watch-over alert: {name}", "{kind}. Open the app and press \"I'll go\"."),
        "claimed": ("{name}: {by} is going", "{by} is handling it. Escalation has stopped."),
        "resolved": ("{name}: resolved", "Outcome: {outcome}. {note}"),
        "cancelled": ("{name}: alert cancelled", "{note}"),
        "comment": ("{name}: comment from {by}", "{note}"),
        "unreachable": ("A watcher could not be reached", "No channel reached {person} (alert for {name})."),
        "device_task": ("Device check needed: {name}", "{note}"),
        "technical": ("Device problem: {name}", "{kind}."),
        "claim_reminder": ("{name}: how did the check go?", "{by} said they would go a while ago. Please report the outcome in the app; the team will be alerted again soon."),  # noqa: E501
        "reopened": ("{name}: the check was not reported", "{by}'s check was not reported, so the alert is open again. Open the app and press \"I'll go\"."),
        "resident_check": ("Watch-over: is everything all right?", "{name}, your lights and sensors have been quiet for longer than usual. If you are fine, please press once on this link (your watchers will be told if there is no answer within {minutes} minutes): {url}"),  # noqa: E501
        "test": ("Watch-over: test message", "A test that watch-over notices reach this contact. No need to reply."),
        "resident_answered_fine": ("{name}: the resident says they are fine", "{by} answered the check: \"I'm fine\"."),
        "resident_answered_away": ("{name}: the resident is away", "{by} answered the check: \"I'm out\". Watching pauses until they are back."),
        "resident_answered_help": ("{name}: the resident asks for help", '{by} answered the check: "Please help". Please go and see now.'),
    },
}


def render_notice(notice: str, locale: str, *, name: str, kind: str = "", by: str = "", outcome: str = "",
                  note: str = "", person: str = "", url: str = "", minutes: str = "") -> tuple[str, str]:
    """(title, body) of a notice in the person's language."""
    lang = locale if locale in _NOTICE_TEXT else "ja"
    title, body = _NOTICE_TEXT[lang][notice]
    fields = {"name": name, "kind": _KIND_TEXT[lang].get(kind, kind), "by": by, "outcome": outcome,
              "note": note or "", "person": person, "url": url, "minutes": minutes}
    return title.format(**fields), body.format(**fields).strip()
