"""The wire protocol codec and topics (pure)."""

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mimamori.kernel import protocol as p

pytestmark = pytest.mark.unit


def test_topic_round_trip() -> None:
    assert p.parse_topic(p.event_topic("gw-1", "bulb.kitchen")) == p.Topic("event", "gw-1", "bulb.kitchen")
    assert p.parse_topic(p.command_topic("gw-1", "d1")) == p.Topic("cmd", "gw-1", "d1")
    assert p.parse_topic(p.status_topic("gw-1")) == p.Topic("status", "gw-1")
    assert p.parse_topic(p.heartbeat_topic("gw-1")) == p.Topic("heartbeat", "gw-1")
    assert p.shared(p.EVENT_FILTER) == "$share/ingest/mimamori/v1/+/+/event"


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("mimamori/v1/gw/dev/event/extra", "bad_topic"),
        ("mimamori/v2/gw/dev/event", "unsupported_version"),
        ("mimamori/v1/gw/dev/evnt", "bad_topic"),
        ("mimamori/v1//dev/event", "bad_gateway_id"),
        ("mimamori/v1/gw/" + "x" * 65 + "/event", "bad_device_id"),
        ("other/v1/gw/dev/event", "bad_topic"),
        ("mimamori/v1/gw", "bad_topic"),
    ],
)
def test_bad_topics(topic: str, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_topic(topic)
    assert err.value.reason == reason


def test_event_round_trip() -> None:
    ev = p.Event("bulb-1", 7, 1_767_225_600_123, "on", None)
    assert p.decode_event(p.encode_event(ev), "bulb-1") == ev
    assert ev.is_activity and ev.time == pytest.approx(1_767_225_600.123)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe", "bad_json"),
        (b"{", "bad_json"),
        (b"[]", "not_an_object"),
        (b'{"device":"d","seq":"1","ts":1767225600000,"kind":"on"}', "bad_seq"),
        (b'{"device":"d","seq":-1,"ts":1767225600000,"kind":"on"}', "bad_seq"),
        (b'{"device":"d","seq":true,"ts":1767225600000,"kind":"on"}', "bad_seq"),
        (b'{"device":"d","seq":1,"ts":12,"kind":"on"}', "bad_ts"),
        (b'{"device":"d","seq":1,"ts":1767225600000,"kind":"dance"}', "unknown_kind"),
        (b'{"device":"e","seq":1,"ts":1767225600000,"kind":"on"}', "device_mismatch"),
        (b'{"device":"d","seq":1,"ts":1767225600000,"kind":"on","value":"x"}', "bad_value"),
        (b'{"v":2,"device":"d","seq":1,"ts":1767225600000,"kind":"on"}', "unsupported_version"),
        (b'{"device":"d","seq":1,"ts":1767225600000,"kind":"on","pad":"' + b"x" * 2000 + b'"}', "oversized"),
    ],
)
def test_bad_payloads(payload: bytes, reason: str) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.decode_event(payload, "d")
    assert err.value.reason == reason


@given(st.binary(max_size=300))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode_event(data, "d")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=6), max_leaves=12))
def test_random_json_never_escapes_as_other_errors(obj: object) -> None:
    with contextlib.suppress(p.ProtocolError):
        p.decode_event(json.dumps(obj).encode(), "d")


def test_commands() -> None:
    cmd = p.Command("resend", {"from_seq": 3, "to_seq": 9})
    assert p.decode_command(p.encode_command(cmd)) == cmd
    with pytest.raises(p.ProtocolError):
        p.decode_command(b'{"cmd":"resend","from_seq":9,"to_seq":3}')
    with pytest.raises(p.ProtocolError):
        p.decode_command(b'{"cmd":"selfdestruct"}')
