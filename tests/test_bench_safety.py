"""The safety-check benchmark (``bench.safety_bench``), run small on the real services: every
household accounted for, the counts exact, the latencies positive and bounded, and nothing left
behind (scratch database dropped, own broker stopped).
"""

from __future__ import annotations

import json
import math
import os

import psycopg
import pytest

from mimamori.bench.safety_bench import ANSWER_SHARE, HOMES_PER_WATCHER, SIGN_OF_LIFE_SHARE, run_safety_bench
from mimamori.kernel import embedded
from mimamori.kernel.mqtt import MqttUrl

pytestmark = pytest.mark.integration

HOUSEHOLDS = 60


def test_safety_bench_small_run_is_exact(pg_server) -> None:  # type: ignore[no-untyped-def]
    # the bench starts a Mosquitto of its own unless a broker is configured for the tests
    r = run_safety_bench(HOUSEHOLDS, seed=3, database_url=pg_server.admin_url,
                         mqtt_url=os.environ.get("MIMAMORI_TEST_MQTT_URL"))
    assert json.loads(json.dumps(r)) == r  # JSON-serialisable as it is
    assert not r["timed_out"]

    n_safe, n_sign = round(HOUSEHOLDS * ANSWER_SHARE), round(HOUSEHOLDS * SIGN_OF_LIFE_SHARE)
    watchers = math.ceil(HOUSEHOLDS / HOMES_PER_WATCHER)
    assert (r["households"], r["seed"], r["answering_households"], r["sign_of_life_households"], r["watchers"]) == \
        (HOUSEHOLDS, 3, n_safe, n_sign, watchers)

    # every household accounted for, each in the state its resident's behaviour calls for
    assert r["board_counts"] == {"needs_help": 0, "no_answer": HOUSEHOLDS - n_safe - n_sign, "unreachable": 0,
                                 "sign_of_life": n_sign, "safe": n_safe, "total": HOUSEHOLDS}
    assert r["board_counts_exact"] and r["board_states_exact"]
    assert r["recognised"] == r["recognised_expected"] == r["board_visible"] == n_safe

    # latencies: positive (the client sees the answer after its switch), bounded (seconds, not tens)
    assert 0 < r["board_visible_latency_min_s"] <= r["board_visible_latency_p50_s"] <= r["board_visible_latency_p99_s"] \
        <= r["board_visible_latency_max_s"] < 5.0
    assert 0 < r["recognition_latency_p50_s"] <= r["recognition_latency_p99_s"] <= r["recognition_latency_max_s"] < 5.0
    assert r["recognition_latency_min_s"] > 0  # stamped once the worker has read the event, so after its publish
    assert 0 < r["start_check_s"] < 10 and 0 < r["board_query_s"] < 5
    assert len(r["board_query_all_s"]) == 3 and min(r["board_query_all_s"]) == r["board_query_s"]
    assert r["start_check_s"] < r["all_recognised_after_s"] < 30

    # blinks: one per bulb (plugs only when a coordinator allows it), queued, sent by the worker, received by the homes
    assert r["blinks_expected"] > HOUSEHOLDS
    assert r["blinks_queued"] == r["blinks_sent"] == r["blinks_received"] == r["blinks_expected"]
    assert 0 < r["blinks_all_sent_after_s"] < 30
    # messages: in-app for every resident and watcher, each with its personal link; webhooks once each
    assert r["in_app_messages"] == r["in_app_messages_expected"] == HOUSEHOLDS + watchers
    assert r["answer_links"] == HOUSEHOLDS
    assert r["messages_sent"] == r["messages_received"] == r["messages_distinct_recipients"] == watchers
    assert 0 < r["messages_first_after_s"] <= r["messages_all_sent_after_s"] < 30
    # every switch went through the broker and the ingest into the database, exactly once
    assert r["events_stored"] == r["events_published"] == 2 * n_safe + n_sign

    assert r["peak_rss_mb"] > 0 and len(r["loadavg_start"]) == len(r["loadavg_end"]) == 3 and r["wall_s"] > 0
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (r["scratch_database"],)).fetchone()[0] == 0
    if r["broker"] != "given":
        url = MqttUrl.parse(r["mqtt_url"])
        assert not embedded.port_open(url.host, url.port), "the bench's own broker is still running"
