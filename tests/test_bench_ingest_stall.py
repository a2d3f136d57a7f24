"""A benchmark against a stock broker says what is wrong instead of hanging (issue 12)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from mimamori.bench.ingest_bench import DrainStalled, run_ingest_bench
from mimamori.kernel.embedded import MosquittoBroker
from mimamori.kernel.mqtt import MqttUrl

pytestmark = pytest.mark.integration


@pytest.fixture
def stock_limits_broker(tmp_path: Path):
    """A real Mosquitto with a small per-client queue, as a stock install has (1000; here 100 so that
    the test publishes little).
    """
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        pytest.skip("needs the mosquitto binary (the limit is Mosquitto's)")
    broker = MosquittoBroker(tmp_path / "stock")
    text = broker.config_path.read_text().replace("max_queued_messages 10000000", "max_queued_messages 100")
    assert "max_queued_messages 100\n" in text
    broker.config_path.write_text(text)
    broker.start()
    yield broker
    broker.stop()


def test_a_backlog_the_broker_dropped_fails_fast_with_the_setting_to_change(pg_url: str, stock_limits_broker: MosquittoBroker) -> None:
    started = time.monotonic()
    with pytest.raises(DrainStalled, match="max_queued_messages") as err:
        run_ingest_bench(pg_url, MqttUrl.parse(stock_limits_broker.url), events=3000, publishers=1, devices=50,
                         timeout_s=120, stall_s=3)
    assert "of 3,000 messages" in str(err.value)
    assert time.monotonic() - started < 60
