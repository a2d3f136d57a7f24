"""Gateway metrics (read from live gateways at scrape time) and the gateway process's readiness."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mimamori.gateway import metrics
from mimamori.gateway.adapters import Reading
from mimamori.gateway.service import Gateway
from mimamori.kernel import embedded, mqtt, observability
from mimamori.kernel.clock import SystemClock
from mimamori.kernel.config import Settings
from support.waiting import wait_for

T0 = 1_767_225_600_000



def scrape(gateway_id: str) -> dict[str, float]:
    """This gateway's samples, keyed by sample name (+ ``:what`` for evictions)."""
    body, _ = observability.render_metrics()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.labels.get("gateway") == gateway_id:
                key = sample.name + (f":{sample.labels['what']}" if "what" in sample.labels else "")
                out[key] = sample.value
    return out


@pytest.mark.integration
def test_metrics_follow_a_gateway_through_its_life(mqtt_url: mqtt.MqttUrl, tmp_path: Path) -> None:
    gw_id = f"gw-{uuid.uuid4().hex[:8]}"
    gw = Gateway(gw_id, mqtt_url, tmp_path / "o.sqlite3", clock=SystemClock(), heartbeat_s=3600)
    assert scrape(gw_id) == {}
    with gw:
        gw.submit_many([Reading(f"dev-{i % 3}", "on", T0 + i) for i in range(120)])
        assert gw.flush(10)
        assert wait_for(lambda: scrape(gw_id).get("mimamori_gateway_events_acked_total") == 120), scrape(gw_id)
        m = scrape(gw_id)
        assert m["mimamori_gateway_events_published_total"] >= 120
        assert m["mimamori_gateway_outbox_depth"] == 0 and m["mimamori_gateway_replay_window_rows"] == 120
        assert m["mimamori_gateway_connected"] == 1 and m["mimamori_gateway_reconnects_total"] == 0
        assert m["mimamori_gateway_evictions_total:pending"] == 0
    assert scrape(gw_id) == {}  # stopped: its series are gone


@pytest.mark.unit
def test_metrics_count_evictions_while_the_broker_is_unreachable(tmp_path: Path) -> None:
    gw_id = f"gw-{uuid.uuid4().hex[:8]}"
    dead = mqtt.MqttUrl("127.0.0.1", embedded.free_port())  # nothing listens there
    gw = Gateway(gw_id, dead, tmp_path / "o.sqlite3", clock=SystemClock(), outbox_max_rows=100, reconnect_base_s=0.05,
                 reconnect_cap_s=0.1, protocol=mqtt.MQTTv311)
    with gw:
        for i in range(150):
            gw.submit(Reading("dev-1", "on", T0 + i))
        m = scrape(gw_id)
        assert m["mimamori_gateway_connected"] == 0
        assert m["mimamori_gateway_outbox_depth"] == gw.outbox_depth <= 100
        assert m["mimamori_gateway_evictions_total:pending"] == 150 - gw.outbox_depth > 0
        assert not metrics.all_connected()


@pytest.mark.integration
def test_gateway_process_serves_readiness_and_metrics(mqtt_url: mqtt.MqttUrl, tmp_path: Path) -> None:
    """`mimamori gateway` with MIMAMORI_OPS_PORT: /readyz is 200 once connected, /metrics has its series."""
    from mimamori.gateway.service import run_gateway

    gw_id = f"gw-{uuid.uuid4().hex[:8]}"
    port = embedded.free_port()
    broker = f"mqtt://{mqtt_url.host}:{mqtt_url.port}"
    settings = Settings(mqtt_url=broker, gateway_heartbeat_s=3600, ops_port=port)
    stop = threading.Event()
    runner = threading.Thread(target=run_gateway, kwargs={"settings": settings, "gateway_id": gw_id, "local_url": broker,
                                                             "outbox_path": tmp_path / "o.sqlite3", "stop": stop})
    runner.start()

    def get(path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()
        except OSError:
            return 0, b""

    try:
        assert wait_for(lambda: get("/readyz")[0] == 200), get("/readyz")
        assert json.loads(get("/readyz")[1])["checks"]["gateway"] is True
        assert f'mimamori_gateway_connected{{gateway="{gw_id}"}} 1.0' in get("/metrics")[1].decode()
    finally:
        stop.set()
        runner.join(15)
    assert not runner.is_alive()
    assert "gateway" not in observability.readiness()[1]
