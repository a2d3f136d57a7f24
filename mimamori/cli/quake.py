"""`mimamori safety feed`: what an earthquake bulletin does (JMA 防災情報XML VXSE51/VXSE53, P2PQuake 551 JSON).

The lead wires ``safety_app`` under ``mimamori safety`` (today the safety worker's command; see the
report of issue 16's item 3 for how the two combine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from mimamori.cli.common import DatabaseOpt, JsonOpt, cli_settings, console, print_json

safety_app = typer.Typer(help="The safety check (安否確認): its feeds.")

FileOpt = Annotated[Path, typer.Option("--file", exists=True, dir_okay=False, readable=True,
                                       help="A JMA earthquake XML document or a P2PQuake 551 JSON record.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Say what the document would do; start and record nothing.")]
ReplayOpt = Annotated[bool, typer.Option("--replay", help="Judge an archived bulletin as if read when issued (a bulletin "
                                                            "read hours late otherwise pages nobody).")]


@safety_app.command("feed")
def feed_command(file: FileOpt, dry_run: DryRunOpt = False, replay: ReplayOpt = False, json_out: JsonOpt = False,
                 database_url: DatabaseOpt = None) -> None:
    """Read one earthquake bulletin: the areas it reaches, their intensity, and whether their safety check
    started (or was proposed to the coordinator), and why."""
    quake_feed(file, dry_run, json_out, database_url, replay=replay)


def quake_feed(file: Path, dry_run: bool, json_out: bool, database_url: str | None, *, replay: bool = False) -> None:
    import psycopg

    from mimamori.kernel.clock import SystemClock
    from mimamori.kernel.signing import signer
    from mimamori.runtime import services
    from mimamori.safety import quake, quake_service
    from mimamori.safety.models import SafetySettings
    from mimamori.safety.service import Links

    settings = cli_settings(database_url)
    data = file.read_bytes()
    try:
        quake.parse(data)  # a document we cannot read is refused before any service starts
    except quake.QuakeDocumentError as exc:
        _refuse(json_out, str(exc))
    links = Links(signer(settings, "safety-answer"), settings.app_url(), SafetySettings().link_max_age_s)
    with services(settings, need_broker=False) as svc, psycopg.connect(svc.database_url, autocommit=True) as conn:
        result = quake_service.feed(conn, data, clock=SystemClock(), links=links, dry_run=dry_run, replay=replay)
    if json_out:
        print_json(result)
    else:
        _print(result)


@dataclass(frozen=True)
class ConsoleOperator:
    """Whoever runs the command holds the database's credentials: an operator, with no account behind it."""

    person_id: None = None
    role: str = "operator"
    area: None = None


@safety_app.command("area")
def area_command(
    area: Annotated[str, typer.Argument(help="The area's name, as households.area spells it.")],
    code: Annotated[list[str] | None, typer.Option("--code", help="A JMA municipality code (7 digits); repeat for several.")] = None,
    name: Annotated[list[str] | None, typer.Option("--name", help="A JMA municipality name (e.g. 田村市); repeat.")] = None,
    region_code: Annotated[list[str] | None, typer.Option("--region-code", help="A 細分区域 code (e.g. 442); repeat.")] = None,
    region_name: Annotated[list[str] | None, typer.Option("--region-name", help="A 細分区域 name (e.g. 静岡県中部); repeat.")] = None,
    threshold: Annotated[str, typer.Option(help="The intensity from which the check starts: 4, 5弱, 5強, 6弱, 6強, 7.")] = "5弱",
    mode: Annotated[str, typer.Option(help="'start' the check, or 'propose' it to the area's coordinator.")] = "start",
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Say how earthquake bulletins name an area and what a strong enough quake does there."""
    import psycopg

    from mimamori.kernel.clock import SystemClock
    from mimamori.runtime import services
    from mimamori.safety import quake, quake_service
    from mimamori.safety.models import SafetyError

    settings = cli_settings(database_url)
    with services(settings, need_broker=False) as svc, psycopg.connect(svc.database_url, autocommit=True) as conn:
        try:
            rule = quake_service.set_area(conn, ConsoleOperator(), area=area, municipality_codes=code or [],
                                          municipality_names=name or [], region_codes=region_code or [],
                                          region_names=region_name or [], threshold=threshold, mode=mode,
                                          clock=SystemClock())
        except SafetyError as exc:
            _refuse(json_out, exc.message)
    out: dict[str, Any] = {"area": rule.area, "municipality_codes": sorted(rule.municipality_codes),
           "municipality_names": sorted(rule.municipality_names), "region_codes": sorted(rule.region_codes),
           "region_names": sorted(rule.region_names), "threshold": quake.scale_name(rule.threshold), "mode": rule.mode}
    if json_out:
        print_json(out)
    else:
        places = sorted(rule.municipality_codes | rule.municipality_names | rule.region_codes | rule.region_names)
        console.print(f"{rule.area}: from 震度{out['threshold']} {rule.mode} the check; places: {', '.join(places)}")


def _refuse(json_out: bool, why: str) -> NoReturn:
    if json_out:
        print_json({"error": why})
    console.print(f"[red]refused:[/red] {why}")
    raise typer.Exit(2)


def _print(result: dict[str, Any]) -> None:
    doc = result["document"]
    head = "dry run — nothing started or recorded" if result["dry_run"] else ("already read" if result["duplicate"] else "read")
    console.print(f"{doc['kind']} {doc['quake_id']} ({doc['status']}, {doc['info_type']}, 最大震度 {doc['max_intensity']}): {head}")
    for d in result["decisions"]:
        check = f" → check {d['check_id']}" if d.get("check_id") else ""
        console.print(f"  {d['area'] or '(document)'}: {d['decision']}{check} — {d['why']}")
