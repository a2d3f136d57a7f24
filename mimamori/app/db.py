"""Request-scoped access to the one psycopg pool and the clock (``Annotated`` dependencies).

Connections are used in autocommit mode: a service function that writes more than one row opens
``with conn.transaction():`` itself, so what a view has done is committed before it answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import Depends, Request

from mimamori.kernel.clock import Clock, as_datetime


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    with request.app.state.pool.connection() as conn:
        conn.autocommit = True
        yield conn


def get_clock(request: Request) -> Clock:
    return request.app.state.clock


Conn = Annotated[psycopg.Connection, Depends(get_conn)]
ClockDep = Annotated[Clock, Depends(get_clock)]


def now(clock: Clock) -> datetime:
    return as_datetime(clock.now())
