"""Issue 17 (low): dead letters had no rate limit — anyone with a broker account could fill the table."""

from __future__ import annotations

import psycopg
import pytest

from mimamori.bench.ingest_bench import publish_raw
from mimamori.ingest.validate import DeadLetter, DeadLetterBudget
from mimamori.kernel import embedded
from mimamori.kernel.mqtt import MqttUrl
from support.waiting import wait_for as wait_until
from test_ingest_consumer import count, make_service, running


@pytest.mark.unit
def test_the_budget_keeps_a_burst_then_one_a_second_and_says_what_it_dropped() -> None:
    budget = DeadLetterBudget(per_s=1.0, burst=3)
    bad = DeadLetter("mimamori/v1/gw-x/d1/event", b"{", "bad_json")
    kept = [budget.admit(bad, 100.0) for _ in range(5)]
    assert [len(k) for k in kept] == [1, 1, 1, 0, 0]
    other = budget.admit(DeadLetter("mimamori/v1/gw-y/d1/event", b"{", "bad_json"), 100.0)
    assert other == [DeadLetter("mimamori/v1/gw-y/d1/event", b"{", "bad_json")]  # another source has its own
    summary, again = budget.admit(bad, 102.0)
    assert again == bad and summary.reason == "rate_limited" and summary.payload == b""
    assert "2 dead letters from gw-x not kept: bad_json x2" in summary.detail


@pytest.mark.integration
def test_a_flood_of_garbage_stores_a_bounded_number_of_rows(pg_url: str, own_broker: embedded.EmbeddedBroker) -> None:
    url = MqttUrl.parse(own_broker.url)
    service = make_service(pg_url, url)
    service.dead_letter_budget = DeadLetterBudget(per_s=0.001, burst=20)
    with running(service):
        publish_raw(url, [(b"mimamori/v1/gw-flood/d1/event", b"\\x00garbage" * 100)] * 500)
        wait_until(lambda: service.stats.received >= 500, what="the flood to arrive")
        wait_until(lambda: count(pg_url, "SELECT count(*) FROM dead_letters") >= 20, what="the kept dead letters")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 20
