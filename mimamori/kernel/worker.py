"""One worker runtime for the engines that run in the background (the alert engine, the safety check):
one main loop in the calling thread and side tasks in threads, supervised. procrastinate's ``Worker``
is the model:

- the worker runs until ``stop`` is set (a signal through ``stop_on_signals``, or its caller);
- a side task is a loop that runs until ``stop``; if one returns or raises while the worker is not
  stopping, the worker logs which one died and why, and stops as a whole (a half-working worker that
  looks alive is worse than a stopped one its supervisor restarts);
- on stop, the main loop ends its pass, the side tasks are joined, and ``cleanup`` callbacks run.

A task gets the worker's ``stop`` event and waits on it (``stop.wait(s)``) instead of sleeping, so a
stop is seen at once. Errors a task expects (a database restart) it handles itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: How long a stopping worker waits for each side task (seconds).
JOIN_TIMEOUT_S = 15.0

Task = Callable[[threading.Event], None]


class SideTaskDiedError(RuntimeError):
    """A side task ended while the worker was running (``Worker.run`` raises it after stopping)."""


@dataclass
class Worker:
    """``main(stop)`` runs in the calling thread; each of ``side_tasks`` (name → task) in a thread."""

    name: str
    main: Task
    side_tasks: dict[str, Task] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    #: the caller's stop (``mimamori serve`` shares one among its stages): it stops this worker, but a
    #: side task dying here stops only this worker
    outer_stop: threading.Event | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    #: set when a side task died (its name and the reason), read after ``run``
    died: str | None = None

    def _supervised(self, name: str, task: Task) -> None:
        try:
            task(self.stop)
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("%s worker: side task %r died: %s; stopping the worker", self.name, name, reason)
        else:
            if self.stop.is_set():
                return
            reason = "returned"
            log.error("%s worker: side task %r returned while the worker was running; stopping the worker", self.name, name)
        if not self.stop.is_set():
            self.died = f"{name}: {reason}"
            self.stop.set()

    def _follow_outer(self, outer: threading.Event) -> None:
        while not self.stop.is_set():
            if outer.wait(0.1):
                self.stop.set()

    def run(self) -> None:
        """Run until ``stop``; raises ``SideTaskDiedError`` if a side task ended the worker."""
        threads = [threading.Thread(target=self._supervised, args=(n, t), name=f"{self.name}-{n}", daemon=True)
                   for n, t in self.side_tasks.items()]
        if self.outer_stop is not None:
            threads.append(threading.Thread(target=self._follow_outer, args=(self.outer_stop,), name=f"{self.name}-stop",
                                            daemon=True))
        log.info("%s worker started (%s)", self.name, ", ".join(["main", *self.side_tasks]))
        try:
            for t in threads:
                t.start()
            self.main(self.stop)
        finally:
            self.stop.set()
            for t in threads:
                t.join(timeout=JOIN_TIMEOUT_S)
                if t.is_alive():
                    log.error("%s worker: side task %s did not stop within %.0f s", self.name, t.name, JOIN_TIMEOUT_S)
            for fn in reversed(self.cleanup):
                try:
                    fn()
                except Exception:
                    log.exception("%s worker: cleanup failed", self.name)
            log.info("%s worker stopped%s", self.name, f" because side task {self.died}" if self.died else "")
        if self.died:
            raise SideTaskDiedError(self.died)


@contextmanager
def stop_on_signals(stop: threading.Event, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Set ``stop`` on SIGTERM / SIGINT (main thread only) for the duration; the old handlers come back after."""
    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
