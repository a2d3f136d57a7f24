"""Waiting on a gateway's broker socket and its wake-up socketpair, for the gateway's own thread.

``poll``, not ``select``: a process running hundreds of gateways has file descriptors above 1024,
which ``select`` cannot watch. Other threads only ``wake()`` the waiter (a byte on the socketpair).
"""

from __future__ import annotations

import contextlib
import select
import socket


class SocketWaiter:
    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._poller = select.poll()
        self._polled_fd = -1
        self._polled_mask = 0

    def wake(self) -> None:
        """Any thread: end the current (or next) ``wait`` now."""
        with contextlib.suppress(BlockingIOError, OSError):  # already awake (buffer full) or closing
            self._wake_w.send(b"\0")

    def forget_socket(self) -> None:
        """The broker connection is gone: the next ``wait`` registers the new socket."""
        self._polled_fd = -1

    def wait(self, fd: int, *, want_write: bool, timeout_s: float) -> int:
        """Wait until ``fd`` is readable (or writable, with ``want_write``), a wake-up, or ``timeout_s``;
        returns ``fd``'s poll events (0: none). Raises ``OSError``/``ValueError`` when ``fd`` is unusable.
        """
        if fd != self._polled_fd:
            self._poller = select.poll()
            self._poller.register(self._wake_r, select.POLLIN)
            self._poller.register(fd, select.POLLIN)
            self._polled_fd, self._polled_mask = fd, select.POLLIN
        mask = select.POLLIN | (select.POLLOUT if want_write else 0)
        if mask != self._polled_mask:
            self._poller.modify(fd, mask)
            self._polled_mask = mask
        ready = dict(self._poller.poll(timeout_s * 1000.0))
        if self._wake_r.fileno() in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while self._wake_r.recv(4096):
                    pass
        return ready.get(fd, 0)

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
