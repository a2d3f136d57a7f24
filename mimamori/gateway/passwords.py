"""Mosquitto 2's password file: ``$7$`` hashes (PBKDF2-HMAC-SHA512, 12-byte salt), what
``mosquitto_passwd`` writes, and the random passwords ``gateway.provision`` issues. Pure: the random
source is an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable, Mapping
from typing import Final

#: Mosquitto's ``$7$`` hash: PBKDF2-HMAC-SHA512. mosquitto_passwd 2.0 uses 101 iterations; the
#: passwords issued here are 192-bit random tokens, so the count guards nothing a guess could find.
HASH_ITERATIONS: Final = 1000


SALT_BYTES: Final = 12


def new_password(token: Callable[[int], str] = secrets.token_urlsafe) -> str:
    """192 random bits, URL- and env-file-safe."""
    return token(24)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = HASH_ITERATIONS) -> str:
    """``$7$<iterations>$<salt b64>$<hash b64>``: the line Mosquitto 2 reads after ``user:``."""
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        _, kind, iterations, salt_b64, digest_b64 = encoded.split("$")
        if kind != "7":
            return False
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt_b64), int(iterations), 64)
    except ValueError:
        return False
    return hmac.compare_digest(base64.b64encode(digest).decode(), digest_b64)


def parse_password_file(text: str) -> dict[str, str]:
    """``user:hash`` lines (blank lines and ``#`` comments skipped)."""
    entries: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, encoded = line.split(":", 1)
        entries[user] = encoded
    return entries


def render_password_file(hashes: Mapping[str, str]) -> str:
    return "".join(f"{user}:{hashes[user]}\n" for user in sorted(hashes))
