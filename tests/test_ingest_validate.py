"""Unit tests of ingest's pure parts: classification, the fast event decoder, batching, resend planning."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mimamori.ingest.batch import Batch
from mimamori.ingest.store import stage_text
from mimamori.ingest.sweeper import ResendPlanner
from mimamori.ingest.validate import Classifier, DeadLetter, EventMsg, GatewayHeartbeatMsg, StatusMsg, fast_event
from mimamori.kernel import protocol
from mimamori.kernel.protocol import Event, ProtocolError

pytestmark = pytest.mark.unit

TS = 1_767_225_600_000
TOPIC = protocol.event_topic("gw-1", "bulb-1").encode()


def payload(**fields: object) -> bytes:
    body = {"v": 1, "device": "bulb-1", "seq": 7, "ts": TS, "kind": "on", "value": None}
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v != "<drop>"}).encode()


def test_valid_event_is_classified_with_its_gateway() -> None:
    item = Classifier().classify(TOPIC, payload())
    assert item == EventMsg("gw-1", Event("bulb-1", 7, TS, "on", None))


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        (TOPIC, b"\x00\xff\xfe garbage", "bad_json"),
        (TOPIC, b'{"v":1,"device":"bulb-1"', "bad_json"),
        (TOPIC, b"[1, 2, 3]", "not_an_object"),
        (TOPIC, b"\xe3\x81\x82\xff", "bad_json"),  # not UTF-8
        (TOPIC, payload(seq="7"), "bad_seq"),
        (TOPIC, payload(seq=-1), "bad_seq"),
        (TOPIC, payload(seq=True), "bad_seq"),
        (TOPIC, payload(ts=1.5e12), "bad_ts"),
        (TOPIC, payload(ts=5), "bad_ts"),
        (TOPIC, payload(kind="dance"), "unknown_kind"),
        (TOPIC, payload(kind=None), "unknown_kind"),
        (TOPIC, payload(value="bright"), "bad_value"),
        (TOPIC, payload(v=2), "unsupported_version"),
        (TOPIC, payload(device="other-bulb"), "device_mismatch"),
        (TOPIC, payload(device="bad id!"), "bad_device_id"),
        (TOPIC, b'{"v":1,"device":"bulb-1","seq":1,"ts":%d,"kind":"on","value":NaN}' % TS, "bad_value"),
        (TOPIC, b"{" + b" " * 2000 + b"}", "oversized"),
        (b"mimamori/v1/gw-1/bulb-1/extra/event", payload(), "bad_topic"),
        (b"mimamori/v1//bulb-1/event", payload(), "bad_gateway_id"),
        (b"mimamori/v1/gw$1/bulb-1/event", payload(), "bad_gateway_id"),
        (b"mimamori/v1/gw-1/" + b"d" * 65 + b"/event", payload(), "bad_device_id"),
        (b"mimamori/v2/gw-1/bulb-1/event", payload(), "unsupported_version"),
        (b"elsewhere/v1/gw-1/bulb-1/event", payload(), "bad_topic"),
        (b"mimamori/v1/gw-1/bulb-1/cmd", b'{"v":1,"cmd":"blink"}', "unexpected_channel"),
        (b"mimamori/v1/\xff\xfe/bulb-1/event", payload(), "bad_topic"),
        (b"mimamori/v1/" + b"x" * 300 + b"/b/event", payload(), "bad_topic"),
        (protocol.status_topic("gw-1").encode(), b"maybe", "bad_status"),
        (protocol.heartbeat_topic("gw-1").encode(), b'{"v":1}', "bad_heartbeat"),
        (protocol.heartbeat_topic("gw-1").encode(), b"nope", "bad_json"),
    ],
)
def test_bad_messages_become_dead_letters_with_a_reason(topic: bytes, body: bytes, reason: str) -> None:
    item = Classifier().classify(topic, body)
    assert isinstance(item, DeadLetter)
    assert item.reason == reason
    assert item.payload == body  # kept whole
    assert "\x00" not in item.topic


def test_status_and_gateway_heartbeat() -> None:
    c = Classifier()
    assert c.classify(protocol.status_topic("gw-1").encode(), b"offline") == StatusMsg("gw-1", "offline")
    hb = protocol.encode_gateway_heartbeat(TS, 3)
    assert c.classify(protocol.heartbeat_topic("gw-1").encode(), hb) == GatewayHeartbeatMsg("gw-1", {"v": 1, "ts": TS, "outbox": 3})


def test_topic_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import mimamori.ingest.validate as v

    monkeypatch.setattr(v, "TOPIC_CACHE_SIZE", 10)
    c = Classifier()
    for i in range(25):
        c.classify(protocol.event_topic("gw", f"d{i}").encode(), payload(device=f"d{i}"))
    assert len(c._topics) <= 10


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1.0, True, 2, "1", None]),
        "device": st.sampled_from(["bulb-1", "bulb-2", "", 5, None]),
        "seq": st.one_of(st.integers(-2, 2**64), st.floats(), st.text(max_size=3)),
        "ts": st.one_of(st.integers(TS - 10, TS + 10), st.integers(0, 2**64), st.floats()),
        "kind": st.sampled_from([*sorted(protocol.EVENT_KINDS), "dance", None, 1]),
        "value": st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-(2**70), 2**70), st.text(max_size=3), st.booleans()),
        "extra": json_values,
    },
)


def _reference(body: bytes) -> Event | str:
    try:
        return protocol.decode_event(body, "bulb-1")
    except ProtocolError as exc:
        return exc.reason
    except OverflowError:  # protocol.decode_event on huge integer values
        return "overflow"


@settings(max_examples=400, deadline=None)
@given(event_like, st.sampled_from(["compact", "spaced", "raw"]), st.binary(max_size=40))
def test_fast_event_agrees_with_protocol_decode_event(obj: dict, style: str, raw: bytes) -> None:
    body = raw if style == "raw" else json.dumps(obj, separators=(",", ":") if style == "compact" else (", ", ": ")).encode()
    fast = fast_event(body, "bulb-1")
    ref = _reference(body)
    if fast is not None:
        assert fast == ref  # the fast path accepts only what decode_event accepts, with equal results
    if isinstance(ref, Event) and style == "compact":
        assert fast == ref  # and it does accept the protocol's own encoding


def test_fast_event_on_the_protocol_encoding() -> None:
    ev = Event("bulb-1", 12, TS, "motion", 3.5)
    assert fast_event(protocol.encode_event(ev), "bulb-1") == ev
    assert fast_event(protocol.encode_event(ev), "bulb-2") is None  # mismatch: slow path names it


# --- batch --------------------------------------------------------------------------------------


def ev(seq: int, ts: int = TS, kind: str = "on", device: str = "bulb-1") -> Event:
    return Event(device, seq, ts + seq, kind)


def test_batch_drops_duplicates_inside_itself_but_acks_every_copy() -> None:
    b = Batch()
    b.add_event("gw", ev(1), mid=1)
    b.add_event("gw", ev(1), mid=2)  # re-delivery, same identity
    b.add(EventMsg("gw", ev(1)), mid=3)
    b.add_event("gw", ev(2), mid=4)
    assert len(b.events) == 2
    assert b.in_batch_duplicates == 2
    assert b.acks == [1, 2, 3, 4]
    assert b.received == 4


def test_batch_keeps_a_heartbeat_apart_from_the_event_with_the_same_seq() -> None:
    b = Batch()
    e = ev(5)
    b.add_event("gw", e)
    b.add_event("gw", Event(e.device_id, e.seq, e.ts_ms, "heartbeat"))
    assert len(b.events) == 2
    assert b.event_rows == 1


def test_batch_keeps_newest_gateway_status_and_heartbeat_and_all_dead_letters() -> None:
    b = Batch()
    b.add(StatusMsg("gw", "online"), 1)
    b.add(StatusMsg("gw", "offline"), 2)
    b.add(GatewayHeartbeatMsg("gw", {"ts": 5}))
    b.add(GatewayHeartbeatMsg("gw", {"ts": 3}))  # older, arrived later
    b.add(DeadLetter("t", b"x", "bad_json"), 3)
    b.add(DeadLetter("t", b"x", "bad_json"), 4)
    assert b.statuses == {"gw": "offline"}
    assert b.gateway_heartbeats == {"gw": {"ts": 5}}
    assert len(b.dead_letters) == 2
    assert b.acks == [1, 2, 3, 4]  # QoS 0 heartbeats carry no packet id


def test_batch_singles_split_every_item_without_acks() -> None:
    b = Batch(generation=3)
    b.add_event("gw", ev(1), 1)
    b.add(StatusMsg("gw", "online"), 2)
    b.add(DeadLetter("t", b"x", "bad_json"), 3)
    singles = b.singles()
    assert len(singles) == 3
    assert all(s.received == 1 and not s.acks and s.generation == 3 for s in singles)


def test_stage_text_is_copy_text() -> None:
    b = Batch()
    b.add_event("gw-1", Event("bulb-1", 1, TS, "on", None))
    b.add_event("gw-1", Event("bulb-1", 2, TS, "fault", 2.5))
    assert stage_text(b.events.values()) == f"gw-1\tbulb-1\t1\t{TS}\ton\t\\N\ngw-1\tbulb-1\t2\t{TS}\tfault\t2.5\n"


# --- resend planning ----------------------------------------------------------------------------


def test_resend_planner_rate_limits_repeats() -> None:
    p = ResendPlanner(repeat_after_s=60)
    rows = [("bulb-1", "gw-1", 5, 9), ("bulb-2", "gw-1", 0, 0)]
    first = p.plan(rows, now=1000.0)
    assert [(g, d, c.cmd, c.args) for g, d, c in first] == [
        ("gw-1", "bulb-1", "resend", {"from_seq": 5, "to_seq": 9}),
        ("gw-1", "bulb-2", "resend", {"from_seq": 0, "to_seq": 0}),
    ]
    assert p.plan(rows, now=1030.0) == []
    assert len(p.plan(rows, now=1061.0)) == 2
    # encodes to a valid protocol command
    assert protocol.decode_command(protocol.encode_command(first[0][2])).args == {"from_seq": 5, "to_seq": 9}
