"""Pure rate limiting of outgoing messages, per channel kind (providers limit senders: e-mail
relays, LINE, Slack ...). A token bucket per key on the caller's clock."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Throttle:
    """``rates``: messages per second per key ('email', 'line', 'webpush', 'mqtt' ...); keys not
    listed use ``rates['default']``. Bursts up to one second's worth (at least 1)."""

    rates: dict[str, float]
    _tokens: dict[str, float] = field(default_factory=dict)
    _at: dict[str, float] = field(default_factory=dict)

    def rate(self, key: str) -> float:
        return float(self.rates.get(key, self.rates.get("default", 1.0)))

    def try_take(self, key: str, now: float) -> bool:
        rate = self.rate(key)
        burst = max(1.0, rate)
        tokens = min(burst, self._tokens.get(key, burst) + (now - self._at.get(key, now)) * rate)
        self._at[key] = now
        if tokens >= 1.0:
            self._tokens[key] = tokens - 1.0
            return True
        self._tokens[key] = tokens
        return False

    def blocked(self, keys: list[str], now: float) -> list[str]:
        """Keys with no token now (without taking one)."""
        out = []
        for key in keys:
            rate = self.rate(key)
            tokens = min(max(1.0, rate), self._tokens.get(key, max(1.0, rate)) + (now - self._at.get(key, now)) * rate)
            if tokens < 1.0:
                out.append(key)
        return out
