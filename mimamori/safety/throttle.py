"""Rate limiting of outgoing messages per channel kind: the one outbox's ``Throttle`` (kept under
this name for the safety check's callers).
"""

from __future__ import annotations

from mimamori.kernel.outbox import Throttle

__all__ = ["Throttle"]
