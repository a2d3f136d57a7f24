"""One clock abstraction for everything where time matters.

Production code takes a ``Clock`` and never calls ``time.time()`` itself, so simulations and tests
can run hours in milliseconds:

- ``SystemClock``: the real wall clock.
- ``ScaledClock``: simulated time that runs ``speed`` times faster than real time from a start
  instant (the accelerated fleet and demo).
- ``ManualClock``: time moves only when the test or a discrete-event loop calls ``advance`` or
  ``set``; ``sleep`` advances it instantly.
- ``PacedClock``: a ``ManualClock`` that a simulation running as fast as it can sets, held within a
  lead of the service's progress; its ``sleep`` really waits (the service lives on the simulation's
  time).
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    def now(self) -> float:
        """Current time in epoch seconds (UTC)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block for ``seconds`` of this clock's time."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Await ``seconds`` of this clock's time."""
        ...


def now_ms(clock: Clock) -> int:
    return int(clock.now() * 1000)


def as_datetime(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=UTC)


class SystemClock:
    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class ScaledClock:
    """Simulated time = ``start + speed * (real time elapsed)``; the speed may change while it runs
    (the demo fast-forwards until something happens, then slows down so people can follow).
    """

    def __init__(self, start: float, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        # One tuple, replaced whole, so a reader never sees half of a speed change.
        self._base = (start, time.monotonic(), speed)

    @property
    def start(self) -> float:
        return self._base[0]

    @property
    def speed(self) -> float:
        return self._base[2]

    def now(self) -> float:
        start, real_start, speed = self._base
        return start + (time.monotonic() - real_start) * speed

    def set_speed(self, speed: float) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._base = (self.now(), time.monotonic(), speed)

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        target = self.now() + seconds
        # Short real naps, so a speed change is honoured within a quarter of a second.
        while (left := target - self.now()) > 0:
            time.sleep(min(left / self.speed, 0.25))

    async def asleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        target = self.now() + seconds
        # Short naps, not an Event: a speed change moves the target's real time while we wait.
        while (left := target - self.now()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(min(left / self.speed, 0.25))

    def __repr__(self) -> str:
        return f"ScaledClock(start={self.start!r}, speed={self.speed!r})"


class ManualClock:
    """Time under explicit control; thread-safe. ``sleep`` advances time instead of waiting."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def set(self, t: float) -> None:
        with self._lock:
            if t < self._now:
                raise ValueError("a clock does not run backwards")
            self._now = t

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += max(0.0, seconds)
            return self._now

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r})"


class PacedClock(ManualClock):
    """Simulated time that a simulation running as fast as it can sets (``set``, as a ``ManualClock``),
    held back so that it never leads the service's progress (``set_floor``: how far the database has
    the simulation) by more than ``max_lead_s``: the service lives on the simulation's time without
    mistaking events still on their way for silence. ``sleep`` really waits until time has moved on.
    ``release()`` (the simulation ended) lets every waiter go; from then on a sleep waits at most a
    second of real time, so loops keep turning without spinning.
    """

    def __init__(self, start: float, *, max_lead_s: float = 900.0, max_hold_s: float = 5.0) -> None:
        super().__init__(start)
        self._cond = threading.Condition()
        self._floor = start
        self._released = False
        self.max_lead_s = max_lead_s
        self.max_hold_s = max_hold_s  # never hold the simulation longer than this (the service may be stuck)

    def set(self, t: float) -> None:
        with self._cond:
            deadline = time.monotonic() + self.max_hold_s
            while t - self._floor > self.max_lead_s and not self._released and time.monotonic() < deadline:
                self._cond.wait(0.05)
            if t > self._now:
                self._now = t
                self._cond.notify_all()

    def advance(self, seconds: float) -> float:
        self.set(self._now + max(0.0, seconds))
        return self._now

    def set_floor(self, t: float) -> None:
        with self._cond:
            if t > self._floor:
                self._floor = t
                self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def sleep(self, seconds: float) -> None:
        target = self._now + seconds
        with self._cond:
            if self._released:
                self._cond.wait(min(seconds, 1.0))
                return
            while self._now < target and not self._released:
                self._cond.wait(0.25)

    async def asleep(self, seconds: float) -> None:
        target = self._now + seconds
        if self._released:
            await asyncio.sleep(min(seconds, 1.0))
            return
        # Polled, not an Event: the town advances this clock from another thread, event by event.
        while self._now < target and not self._released:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    def __repr__(self) -> str:
        return f"PacedClock(now={self._now!r}, floor={self._floor!r})"
