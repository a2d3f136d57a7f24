"""The service's signing key: configured (``MIMAMORI_SECRET_KEY``), else one random key per data dir.

Used for CSRF tokens bound to a session and for single-use no-login links. Everything that signs
goes through :func:`signer`, so a key rotation is one setting.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from itsdangerous import URLSafeTimedSerializer

from mimamori.kernel.config import Settings


def secret_key(settings: Settings) -> str:
    if settings.secret_key is not None and settings.secret_key.get_secret_value():
        return settings.secret_key.get_secret_value()
    return _stored_key(settings.data_dir / "secret_key")


#: A stored key shorter than this is refused (issue 17: an empty file was accepted as the key, and
#: anyone could then forge answer links and CSRF tokens).
MIN_KEY_CHARS = 32


def _read_key(path: Path) -> str:
    """The stored key; waits a moment for a process that created the file but has not written it
    yet (O_EXCL below), then refuses an empty or short one rather than sign with it.
    """
    deadline = time.monotonic() + 2.0
    while True:
        key = path.read_text(encoding="ascii").strip()
        if len(key) >= MIN_KEY_CHARS:
            return key
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} holds no usable secret key ({len(key)} characters): delete it to have "
                               "a new one made, or set MIMAMORI_SECRET_KEY")
        time.sleep(0.05)


def _stored_key(path: Path) -> str:
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting together agree on the first key written.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key)
    return key


def signer(settings: Settings, purpose: str) -> URLSafeTimedSerializer:
    """A serializer whose tokens are valid only for ``purpose`` (the salt), e.g. ``"safety-answer"``."""
    return URLSafeTimedSerializer(secret_key(settings), salt=f"mimamori/{purpose}")
