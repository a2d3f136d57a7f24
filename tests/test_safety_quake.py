"""The earthquake core (mimamori/safety/quake.py) on real published documents (tests/data/quake/SOURCES.md):
JMA 震度速報 / 震源・震度情報 and P2PQuake 551 records read into one model; per-area decisions —
threshold, drills and tests, cancellations, repeated bulletins, P2PQuake station names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from mimamori.safety import quake

pytestmark = pytest.mark.unit
DATA = Path(__file__).parent / "data" / "quake"
SURUGA_1 = "32-35_07_01_100915_VXSE51.xml"     # 2009-08-11 駿河湾, first 震度速報
SURUGA_2 = "32-35_07_02_100915_VXSE51.xml"     # the same quake, a later 震度速報 (adds 長野県南部 5弱)
CANCEL = "32-39_05_12_100915_VXSE53.xml"       # 取消
TAMURA = "20210216233339_0_VXSE53_010000.xml"  # 震源・震度情報, 田村市 震度1
WEAK_51 = "20210217140808_0_VXSE51_010000.xml"  # 震度速報, 震度3
KUMAMOTO = "p2pquake_551_20160414_ScalePrompt.json"
IBURI = "p2pquake_551_20180906_DetailScale.json"


def doc(name: str) -> bytes:
    return (DATA / name).read_bytes()


def rule(area: str, *, municipality_codes: set[str] | None = None, municipality_names: set[str] | None = None,
         region_codes: set[str] | None = None, region_names: set[str] | None = None, threshold: int = 45,
         mode: quake.Mode = "start") -> quake.AreaRule:
    return quake.AreaRule(area, frozenset(municipality_codes or ()), frozenset(municipality_names or ()),
                          frozenset(region_codes or ()), frozenset(region_names or ()), threshold, mode)


# --- parsing ------------------------------------------------------------------------------------


def test_jma_shindo_sokuho_regions() -> None:
    r = quake.parse(doc(SURUGA_1))
    assert (r.source, r.kind, r.quake_id, r.status, r.info_type) == ("jma", "VXSE51", "jma:20090811050711", "real", "issued")
    assert r.max_scale == 55 and quake.scale_name(r.max_scale) == "6弱"
    regions = {p.code: (p.name, quake.scale_name(p.scale)) for p in r.places}
    assert regions["442"] == ("静岡県中部", "6弱") and regions["440"] == ("静岡県伊豆", "5強")
    assert regions["422"] == ("長野県南部", "4")
    assert all(p.kind == "region" for p in r.places) and len(r.places) == 37


def test_jma_vxse53_municipalities() -> None:
    r = quake.parse(doc(TAMURA))
    assert (r.kind, r.quake_id, r.max_scale) == ("VXSE53", "jma:20210217083059", 10)
    assert [(p.kind, p.name, p.code, p.scale) for p in r.places] == [
        ("region", "福島県中通り", "250", 10), ("city", "田村市", "0721100", 10)]


def test_jma_cancellation_and_document_identity() -> None:
    r = quake.parse(doc(CANCEL))
    assert (r.info_type, r.quake_id, r.places, r.max_scale) == ("cancelled", "jma:20100227153529", (), None)
    # two bulletins of one quake share the quake id, never the document id
    a, b = quake.parse(doc(SURUGA_1)), quake.parse(doc(SURUGA_2))
    assert a.quake_id == b.quake_id and a.document_id != b.document_id
    assert quake.parse(doc(SURUGA_1)).document_id == a.document_id


@pytest.mark.parametrize(("status", "expected"), [("訓練", "drill"), ("試験", "test")])
def test_jma_drill_and_test_status(status: str, expected: str) -> None:
    # No small drill earthquake bulletin was found to store (SOURCES.md); JMA's drills carry the same
    # document with Control/Status 訓練 (or 試験), which is all that changes here.
    data = doc(SURUGA_1).replace("<Status>通常</Status>".encode(), f"<Status>{status}</Status>".encode())
    assert quake.parse(data).status == expected


def test_jma_unreported_city_counts_as_5_lower() -> None:
    data = doc(TAMURA).replace("<City><Name>田村市</Name><Code>0721100</Code><MaxInt>1</MaxInt>".encode(),
                               "<City><Name>田村市</Name><Code>0721100</Code><Condition>震度５弱以上未入電</Condition>".encode())
    city = next(p for p in quake.parse(data).places if p.kind == "city")
    assert city.scale == quake.UNREPORTED_5_LOWER
    # with the reported stations' MaxInt beside it, the unreported ones still decide
    both = doc(TAMURA).replace(b"<Code>0721100</Code><MaxInt>1</MaxInt>",
                               "<Code>0721100</Code><MaxInt>1</MaxInt><Condition>震度５弱以上未入電</Condition>".encode())
    city = next(p for p in quake.parse(both).places if p.kind == "city")
    assert city.scale == quake.UNREPORTED_5_LOWER
    (d,) = quake.decide(quake.parse(both), [TAMURA_AREA], {})
    assert d.decision == "start"


def test_p2pquake_records() -> None:
    k = quake.parse(doc(KUMAMOTO))
    assert (k.source, k.kind, k.quake_id, k.status, k.info_type, k.max_scale) == (
        "p2pquake", "ScalePrompt", "p2pquake:2016/04/14 21:26:00", "real", "issued", 70)
    assert [(p.kind, p.name, p.pref, p.scale) for p in k.places][:2] == [
        ("region", "熊本県熊本", "熊本県", 70), ("region", "熊本県阿蘇", "熊本県", 45)]
    i = quake.parse(doc(IBURI))
    assert i.kind == "DetailScale" and {p.name: p.scale for p in i.places}["厚真町鹿沼"] == 46
    assert all(p.kind == "station" for p in i.places)


@pytest.mark.parametrize("data", [
    b"", b"hello", b"<Report", b"<Other/>", b'{"code": 552}', b"[]", b'{"code": 551}',
    b'<!DOCTYPE x [<!ENTITY a "b">]><Report/>',
    b'{"code":551,"issue":{"type":"DetailScale"},"earthquake":{"time":"2020/01/01 00:00:00"},"points":[{"addr":"x","scale":33}]}',
])
def test_bad_documents_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(quake.QuakeDocumentError):
        quake.parse(data)


def test_unknown_status_or_info_type_is_refused() -> None:
    with pytest.raises(quake.QuakeDocumentError, match="Status"):
        quake.parse(doc(SURUGA_1).replace("<Status>通常</Status>".encode(), b"<Status>X</Status>"))
    with pytest.raises(quake.QuakeDocumentError, match="InfoType"):
        quake.parse(doc(SURUGA_1).replace("<InfoType>発表</InfoType>".encode(), b"<InfoType>X</InfoType>"))


def test_thresholds() -> None:
    assert [quake.parse_threshold(v) for v in ("5弱", "震度５弱", "5-", "6強", 45, "4", "７")] == [45, 45, 45, 60, 45, 40, 70]
    for bad in ("5", "8", 46, "weak"):
        with pytest.raises(ValueError, match="unknown intensity"):
            quake.parse_threshold(bad)


# --- deciding -----------------------------------------------------------------------------------

SHIZUOKA = rule("shizuoka-chubu", region_codes={"442"})
NAGANO = rule("nagano-nanbu", region_codes={"422"})
TOKYO = rule("tokyo", region_names={"東京都２３区"}, threshold=40, mode="propose")
TAMURA_AREA = rule("tamura", municipality_codes={"0721100"})


def test_strong_quake_starts_the_area_and_only_it() -> None:
    ds = {d.area: d for d in quake.decide(quake.parse(doc(SURUGA_1)), [SHIZUOKA, NAGANO, TOKYO, TAMURA_AREA], {})}
    assert ds["shizuoka-chubu"].decision == "start" and ds["shizuoka-chubu"].scale == 55
    assert "震度6弱" in ds["shizuoka-chubu"].why
    assert ds["nagano-nanbu"].decision == "below"          # 震度4 < 5弱
    assert ds["tokyo"].decision == "propose"                # 震度4 ≥ its threshold 4, mode propose
    assert ds["tamura"].decision == "not_affected"


def test_a_later_bulletin_acts_once_per_area() -> None:
    second = quake.parse(doc(SURUGA_2))
    ds = {d.area: d.decision for d in quake.decide(second, [SHIZUOKA, NAGANO], {"shizuoka-chubu": "start"})}
    assert ds == {"shizuoka-chubu": "already", "nagano-nanbu": "start"}   # 長野県南部 reached 5弱 only now


def test_correction_reaching_the_threshold_starts_and_says_so() -> None:
    corrected = quake.parse(doc(SURUGA_2).replace("<InfoType>発表</InfoType>".encode(), "<InfoType>訂正</InfoType>".encode()))
    (d,) = quake.decide(corrected, [NAGANO], {})
    assert (d.decision, corrected.info_type) == ("start", "corrected") and "訂正" in d.why


@pytest.mark.parametrize("status", ["訓練", "試験"])
def test_drills_and_tests_never_page(status: str) -> None:
    drill = quake.parse(doc(SURUGA_1).replace("<Status>通常</Status>".encode(), f"<Status>{status}</Status>".encode()))
    assert [(d.area, d.decision) for d in quake.decide(drill, [SHIZUOKA, TOKYO], {})] == [(None, "drill")]


def test_cancellation_starts_nothing() -> None:
    assert [d.decision for d in quake.decide(quake.parse(doc(CANCEL)), [SHIZUOKA], {})] == ["cancelled"]


def test_weak_quake_and_municipality_threshold() -> None:
    tamura = quake.parse(doc(TAMURA))
    assert [d.decision for d in quake.decide(tamura, [TAMURA_AREA], {})] == ["below"]
    low = rule("tamura", municipality_codes={"0721100"}, threshold=10)
    (d,) = quake.decide(tamura, [low], {})
    assert (d.decision, d.matched) == ("start", ("田村市:1",))
    weak = quake.parse(doc(WEAK_51))
    assert [d.decision for d in quake.decide(weak, [rule("miyagi", region_codes={"222"})], {})] == ["below"]


def test_municipality_beats_its_region() -> None:
    # the area names both its city and its region: the city's own intensity decides, not the region's
    both = rule("tamura", municipality_codes={"0721100"}, region_codes={"250"}, threshold=10)
    (d,) = quake.decide(quake.parse(doc(TAMURA)), [both], {})
    assert d.matched == ("田村市:1",)


def test_p2pquake_stations_match_municipality_names() -> None:
    iburi = quake.parse(doc(IBURI))
    atsuma = rule("atsuma", municipality_names={"厚真町"}, threshold=60)
    abira = rule("abira", municipality_names={"安平町"}, threshold=70)
    sapporo = rule("sapporo-kita", municipality_names={"札幌北区"})
    ds = {d.area: d for d in quake.decide(iburi, [atsuma, abira, sapporo], {})}
    # 厚真町's station did not report (46, 5弱以上と推定): a reason to check even above its 6強 threshold
    assert ds["atsuma"].decision == "start" and "未入電" in ds["atsuma"].why
    assert ds["abira"].decision == "below"          # 6強 < 7
    assert ds["sapporo-kita"].decision == "start"   # 5強 ≥ 5弱


def test_p2pquake_scale_prompt_regions() -> None:
    kumamoto = quake.parse(doc(KUMAMOTO))
    ds = {d.area: d.decision for d in quake.decide(kumamoto, [rule("kumamoto", region_names={"熊本県熊本"}),
                                                              rule("koshiki", region_names={"鹿児島県甑島"})], {})}
    assert ds == {"kumamoto": "start", "koshiki": "below"}


def test_reaches() -> None:
    assert quake.reaches(45, 45) and not quake.reaches(40, 45) and quake.reaches(46, 70) and not quake.reaches(50, 55)


def test_message_names_area_and_intensity() -> None:
    (d,) = quake.decide(quake.parse(doc(SURUGA_1)), [SHIZUOKA], {})
    text = quake.check_message(d)
    assert "shizuoka-chubu" in text and "震度6弱" in text and len(text) <= 1000


def test_when_a_bulletin_was_issued_and_how_late_is_too_late() -> None:
    jma = quake.parse(doc("32-35_07_01_100915_VXSE51.xml"))
    p2p = quake.parse(doc("p2pquake_551_20180906_DetailScale.json"))
    issued_jma, issued_p2p = quake.issued_epoch(jma), quake.issued_epoch(p2p)
    assert issued_jma is not None and issued_p2p is not None
    assert datetime.fromtimestamp(issued_jma, UTC).isoformat().startswith("2009-08-10T20:")  # 05:0x JST on the 11th
    assert datetime.fromtimestamp(issued_p2p, UTC).isoformat().startswith("2018-09-05T18:")  # 03:xx JST on the 6th
    rules = [rule("shizuoka-chubu", region_codes={"442"})]
    assert quake.decide(jma, rules, {}, now=issued_jma + 600)[0].decision == "start"
    [late] = quake.decide(jma, rules, {}, now=issued_jma + quake.STALE_AFTER_S + 1)
    assert (late.area, late.decision) == (None, "stale")
