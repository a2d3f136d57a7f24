"""Demo logins: an operator, a coordinator of an area, two watchers on some households' teams and
a resident, on whatever households exist (the simulated town). Idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from mimamori.alerts import policy
from mimamori.app.auth.service import NOTICE_VERSION, hash_password
from mimamori.kernel.clock import Clock, SystemClock, as_datetime

DEMO_PASSWORD = "mimamori-demo"  # noqa: S105 -- the demo prints its logins on purpose; never a real account


@dataclass(frozen=True)
class DemoLogin:
    role: str
    login: str
    password: str
    display_name: str
    person_id: str
    households: tuple[str, ...] = ()

    def line(self) -> str:
        extra = f"  ({', '.join(self.households)})" if self.households else ""
        return f"{self.role:<11} login={self.login:<12} password={self.password}  {self.display_name}{extra}"


def create_demo_accounts(conn: psycopg.Connection, clock: Clock | None = None, *, password: str = DEMO_PASSWORD,
                         area: str | None = None, team_size: int = 3) -> list[DemoLogin]:
    """Create (or refresh) demo people and accounts; returns their logins. Needs at least one household
    (creates a demo household when there is none).
    """
    clock = clock or SystemClock()
    now = as_datetime(clock.now())
    with conn.transaction():
        if area is None:
            row = conn.execute("SELECT area FROM households WHERE area IS NOT NULL GROUP BY area"
                               " ORDER BY count(*) DESC, area LIMIT 1").fetchone()
            area = row[0] if row else "demo-area"
        homes = [r[0] for r in conn.execute(
            "SELECT household_id FROM households WHERE area = %s ORDER BY household_id LIMIT %s", (area, 2 * team_size))]
        if not homes:
            conn.execute("INSERT INTO households (household_id, display_name, area) VALUES ('demo-home', '見守り 花子', %s)"
                         " ON CONFLICT DO NOTHING", (area,))
            homes = ["demo-home"]
        team1, team2 = tuple(homes[:team_size]), tuple(homes[team_size:2 * team_size] or homes[:1])
        people = [
            DemoLogin("operator", "operator", password, "運営 太郎", "demo-operator"),
            DemoLogin("coordinator", "coordinator", password, "町会長 山田", "demo-coordinator", (area,)),
            DemoLogin("watcher", "watcher1", password, "民生委員 佐藤", "demo-watcher1", team1),
            DemoLogin("watcher", "watcher2", password, "近所の 鈴木", "demo-watcher2", team2),
            DemoLogin("resident", "resident", password, "見守られる 本人", "demo-resident", homes[:1]),
        ]
        pw_hash = hash_password(password)
        for p in people:
            conn.execute(
                "INSERT INTO people (person_id, display_name, role, area, household_id) VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (person_id) DO UPDATE SET role = EXCLUDED.role, area = EXCLUDED.area,"
                " household_id = EXCLUDED.household_id",
                (p.person_id, p.display_name, p.role, area if p.role == "coordinator" else None,
                 homes[0] if p.role == "resident" else None),
            )
            conn.execute(
                "INSERT INTO accounts (person_id, login, password_hash, created_at, password_changed_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (person_id) DO UPDATE SET password_hash = EXCLUDED.password_hash",
                (p.person_id, p.login, pw_hash, now, now),
            )
            if p.role == "watcher":
                for hid in p.households:
                    conn.execute(
                        "INSERT INTO household_watchers (household_id, person_id, tier, relation) VALUES (%s, %s, 1, %s)"
                        " ON CONFLICT DO NOTHING", (hid, p.person_id, "minsei_iin" if p.login == "watcher1" else "neighbour"))
        conn.execute(
            "INSERT INTO consents (household_id, given_by, notice_version, given_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT DO NOTHING", (homes[0], "demo-resident", NOTICE_VERSION, now))
        # The resident's home asks the resident first (in the app: sign in as "resident" to see the
        # question), then the team: the chain a home gets by default once its resident has an address.
        conn.execute("INSERT INTO escalation_chains (household_id, steps, updated_at, updated_by) VALUES (%s, %s, %s, %s)"
                     " ON CONFLICT (household_id) DO NOTHING",
                     (homes[0], Jsonb(policy.validate_chain(list(policy.RESIDENT_FIRST_CHAIN))), now, "demo-coordinator"))
    return people
