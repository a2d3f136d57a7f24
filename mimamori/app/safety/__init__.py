"""The safety check's pages (``app.safety.views``; composed with the stage's JSON API in ``app.api``).
Importing the package merges the strings of ``app.safety.i18n`` into the app's one i18n dictionary.
"""

from __future__ import annotations

from mimamori.app.i18n import MESSAGES
from mimamori.app.safety.i18n import SAFETY_MESSAGES

for _key, _pair in SAFETY_MESSAGES.items():
    MESSAGES.setdefault(_key, _pair)
