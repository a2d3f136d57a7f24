"""Data shapes, settings, errors and message texts of the safety check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from mimamori.kernel import errors

ANSWERS: Final = ("safe", "needs_help")
ON_BEHALF_ANSWERS: Final = ("safe", "needs_help", "sign_of_life")
BOARD_STATES: Final = ("needs_help", "no_answer", "unreachable", "sign_of_life", "safe")


class SafetySettings(BaseSettings):
    """``MIMAMORI_SAFETY_*`` settings."""

    model_config = SettingsConfigDict(env_prefix="MIMAMORI_SAFETY_", extra="ignore")

    #: Messages per second per channel kind (providers' limits); JSON in the environment, e.g.
    #: ``MIMAMORI_SAFETY_RATES='{"email": 2, "line": 10}'``. Unlisted kinds use "default".
    rates: dict[str, float] = Field(default_factory=lambda: {
        "mqtt": 200.0, "email": 5.0, "line": 10.0, "slack": 1.0, "webhook": 20.0, "webpush": 50.0, "default": 5.0})
    #: Seconds between looks at new events / the outbox when nothing wakes the worker.
    poll_s: float = Field(default=0.5, gt=0, le=10)
    #: Events received up to this long before the cursor are looked at again (late commits).
    lookback_s: float = Field(default=5.0, ge=0, le=300)
    #: A double toggle: two opposite switches of one bulb within this many seconds.
    double_toggle_window_s: float = Field(default=10.0, gt=0, le=120)
    #: How long an answer link stays valid (seconds).
    link_max_age_s: int = Field(default=7 * 86400, gt=0)
    blinks: int = Field(default=3, ge=1, le=20)


class SafetyError(errors.MimamoriError):
    """Base of the safety check's errors; ``status`` is the HTTP status the views use."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(SafetyError, errors.NotFound):
    status = 404


class Forbidden(SafetyError, errors.Forbidden):
    status = 403


class Conflict(SafetyError, errors.Conflict):
    status = 409


class Gone(SafetyError, errors.Gone):
    status = 410


class InvalidInput(SafetyError, errors.InvalidInput):
    status = 422


class BadLink(SafetyError, errors.BadRequest):
    """A link that was tampered with, expired, or never issued."""

    status = 400


@dataclass(frozen=True)
class Actor:
    person_id: str
    role: str
    area: str | None = None
    household_id: str | None = None


# --- message texts (Japanese first) -----------------------------------------------------------

_TEXT: Final = {
    "ja": {
        "title": "安否確認: {message}",
        "resident": "{message}\n無事なら、電球のスイッチを2回続けて切り替えてください(消して、またつける)。"
                    "または次のリンクを開いてボタンを押してください:\n{link}",
        "watcher": "{message}\n見守り先: {names}\n状況はアプリで確認できます: {board}",
        "needs_help_title": "安否確認: {name}さんが助けを求めています",
        "needs_help": "{name}さんが「助けが必要」と答えました。アプリで「私が行きます」を押してください。",
        "no_answer_title": "安否確認: {name}さんの様子を見に行ってください",
        "no_answer": "{name}さんから安否確認の応答がありません。行ける方はアプリで「私が行きます」を押してください。",
    },
    "en": {
        "title": "Safety check: {message}",
        "resident": "{message}\nIf you are safe, switch a light twice in a row (off and on again), "
                    "or open this link and press a button:\n{link}",
        "watcher": "{message}\nYour households: {names}\nSee who has answered in the app: {board}",
        "needs_help_title": "Safety check: {name} needs help",
        "needs_help": "{name} answered \"I need help\". Open the app and press \"I'll go\".",
        "no_answer_title": "Safety check: please go and see {name}",
        "no_answer": "{name} has not answered the safety check. If you can go, press \"I'll go\" in the app.",
    },
}


def render_message(kind: str, locale: str, **fields: str) -> tuple[str, str]:
    lang = locale if locale in _TEXT else "ja"
    title = _TEXT[lang][f"{kind}_title" if kind in ("needs_help", "no_answer") else "title"]
    return title.format(**fields), _TEXT[lang][kind].format(**fields)
