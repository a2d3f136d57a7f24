"""The simulator, the demo, the fault suite and the detector's evaluation."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mimamori.cli.common import (
    DatabaseOpt,
    JsonOpt,
    MqttOpt,
    admin_database,
    cli_settings,
    console,
    parse_speed,
    print_json,
    stop_on_signals,
)

app = typer.Typer()  # top-level commands, merged into the `mimamori` command


@app.command()
def sim(
    households: Annotated[int, typer.Option(min=1, max=100_000)] = 20,
    days: Annotated[float, typer.Option(min=0.01, max=3650)] = 1.0,
    speed: Annotated[str, typer.Option(help="Simulated seconds per real second, or 'max'.")] = "3600",
    seed: int = 1,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: MqttOpt = None,
    workdir: Annotated[Path | None, typer.Option(help="Where gateway outboxes live.")] = None,
    linger: Annotated[float, typer.Option(help="Real seconds the gateways stay on after the last event, serving resend requests.")] = 0.0,
) -> None:
    """Simulate a town: residents, bulbs and sensors, through real gateways to the broker."""
    import psycopg

    from mimamori.firmware_sim.fleet import fleet_manifest, register_manifest, run_fleet
    from mimamori.runtime import services

    settings = cli_settings(database_url, mqtt_url)
    with services(settings, start_embedded=False, migrate=False) as svc:
        manifest = fleet_manifest(households, seed)
        with psycopg.connect(svc.database_url) as conn:
            register_manifest(conn, manifest)
        work = workdir or Path(tempfile.mkdtemp(prefix="mimamori-sim-"))
        report = run_fleet(
            svc.mqtt_url, households=households, days=days, speed=parse_speed(speed), seed=seed, workdir=work, linger_s=linger
        )
    if json_out:
        print_json(report.to_json())
    else:
        console.print(report.to_json())


@app.command()
def demo(
    households: Annotated[int, typer.Option(min=1, max=5000)] = 50,
    days: Annotated[float, typer.Option(min=0.1, help="Simulated days after the history.")] = 7.0,
    speed: Annotated[str, typer.Option(help="Simulated seconds per real second once the first alert is open, or 'max'.")] = "60",
    fast_forward: Annotated[float, typer.Option(min=1, help="Simulated seconds per real second until then.")] = 3600.0,
    history_days: Annotated[float, typer.Option(min=1, help="Days of history loaded before the live part.")] = 14.0,
    seed: int = 1,
    exit_when_done: Annotated[bool, typer.Option(help="Stop once the simulation is stored (for scripts).")] = False,
    until_alert: Annotated[bool, typer.Option(help="Stop once the story's alert is open (exit 1 if it never comes).")] = False,
    max_seconds: Annotated[
        float | None, typer.Option(min=1, help="Stop after this many real seconds (exit 1 with --until-alert and no alert).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """The whole service on embedded defaults with a simulated town, with live progress."""
    from mimamori.demo import run_demo

    settings = cli_settings()
    result = run_demo(
        settings,
        households=households,
        days=days,
        speed=parse_speed(speed),
        seed=seed,
        stop=stop_on_signals(),
        exit_when_done=exit_when_done,
        fast_forward=fast_forward,
        history_days=history_days,
        until_alert=until_alert,
        max_seconds=max_seconds,
        console=console if json_out else None,
    )  # with --json, stdout carries only the JSON
    if json_out:
        print_json(result)
    else:
        console.print(f"demo stopped: {result}")
    if until_alert and result.get("first_alert") is None:
        console.print("[red]the story's alert did not open[/]")
        raise typer.Exit(1)


@app.command()
def chaos(
    faults: Annotated[str, typer.Option(help="Comma-separated faults (default: all).")] = "",
    households: Annotated[int | None, typer.Option(min=20, help="Simulated households (default 100; 20 with --short).")] = None,
    short: Annotated[bool, typer.Option("--short", help="CI-sized: smaller fleet, 5 s database outage, one kill.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON report to this file.")] = None,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Fault suite: each fault on its own scratch database, broker and processes; counts lost and
    duplicated events and alerts. Exit code 1 if any count is non-zero."""
    from mimamori.bench.chaos import FAULTS, ChaosPlan, run_chaos, table_row

    settings = cli_settings(database_url)  # the suite starts a broker of its own per fault
    chosen = [f.strip() for f in faults.split(",") if f.strip()] or list(FAULTS)
    plan = ChaosPlan.short(households) if short else ChaosPlan.full(households)
    with admin_database(settings) as admin_url:
        work = Path(tempfile.mkdtemp(prefix="mimamori-chaos-"))
        report = run_chaos(chosen, plan, admin_url, work, progress=lambda r: console.print(f"chaos {r.fault}: {table_row(r)}"))
    if out:
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if json_out:
        print_json(report)
    else:
        from rich.table import Table

        table = Table(title="mimamori chaos")
        for col in report["table"][0]:
            table.add_column(col)
        for row in report["table"]:
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        Console().print(table)
    raise typer.Exit(0 if report["ok"] else 1)


@app.command("eval")
def evaluate(
    households: Annotated[int, typer.Option(min=1)] = 300,
    days: Annotated[float, typer.Option(min=7)] = 90.0,
    seed: int = 11,
    bulbs_only: Annotated[bool, typer.Option("--bulbs-only", help="Only bulbs, as many homes will have.")] = False,
    replay: Annotated[
        list[str] | None,
        typer.Option(
            help="Replay real logs instead, one home each (repeatable): FORMAT:PATH with FORMAT casas, uci_adl or csv "
            "(time,sensor,value[,kind])."
        ),
    ] = None,
    cuts: Annotated[int | None, typer.Option(min=1, help="Replay: incidents injected per home (cuts).")] = None,
    learning_days: Annotated[
        float | None, typer.Option(min=1, help="Days learned before incidents (default 21 simulated, 7 replayed).")
    ] = None,
    resident_answers: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="What-if: the team's view when the resident is asked first (10 min) and answers "
            "in waking hours with this probability (replay: 0.7 unless given).",
        ),
    ] = None,
    asked_first: Annotated[
        bool,
        typer.Option(
            "--asked-first", help="Score every home as one whose resident is asked first (the detector's faster threshold for such homes)."
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Detector and the baselines on the same streams: recall, delays, false alerts."""
    from mimamori.bench.eval import ResidentCheck, run_eval, run_replay, summary_rows

    cli_settings()
    if replay:
        from mimamori.bench.casas import parse_spec

        for spec in replay:
            try:
                parse_spec(spec)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
        check = ResidentCheck(0.7 if resident_answers is None else resident_answers, seed=seed)
        result = run_replay(
            replay,
            bulbs_only=bulbs_only,
            seed=seed,
            cuts=cuts,
            learning_days=7.0 if learning_days is None else learning_days,
            resident_check=check,
            asked_first=asked_first,
        )
    else:
        check = ResidentCheck(resident_answers, seed=seed) if resident_answers is not None else None
        result = run_eval(
            households,
            days,
            seed,
            bulbs_only=bulbs_only,
            resident_check=check,
            asked_first=asked_first,
            learning_days=21.0 if learning_days is None else learning_days,
        )
    if json_out:
        print_json(result)
        return
    from rich.table import Table

    if replay:
        _print_replay(result)
        return
    table = Table(title="mimamori eval")
    for col in ("system", "recall", "median_delay_h", "p90_delay_h", "false_alerts_per_household_month", "nights_away_alerted"):
        table.add_column(col, justify="right" if col != "system" else "left")
    for row in summary_rows(result):
        table.add_row(*(str(row[k]) if not isinstance(row[k], float) else f"{row[k]:.3f}" for k in row))
    Console().print(table)
    if "team" in result["detector"]:
        team = Table(title=f"what the team receives, resident asked first (answer rate {resident_answers})")
        for col in (
            "system",
            "welfare median_delay_h",
            "welfare p90_delay_h",
            "false_alerts_per_household_month",
            "spared_by_the_resident",
        ):
            team.add_column(col, justify="right" if col != "system" else "left")
        for name, sysr in [("detector", result["detector"]), *result["baselines"].items()]:
            t = sysr["team"]
            team.add_row(
                name,
                str(t["welfare"]["median_delay_h"]),
                str(t["welfare"]["p90_delay_h"]),
                str(t["false_alerts_per_household_month"]),
                str(t["spared_by_the_resident"]),
            )
        Console().print(team)


def _print_replay(result: dict) -> None:
    """One row per home and system, then the homes pooled and the across-homes summary."""
    from rich.table import Table

    from mimamori.bench.eval import replay_rows

    rate = result["run"]["resident_answers"]
    table = Table(title=f"mimamori eval --replay (team_*: what reaches the team when the resident is asked first, answer rate {rate})")
    rows = replay_rows(result)
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("home", "system") else "right")
    for row in rows:
        table.add_row(*("" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values()))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    for home in result["homes"]:
        wq = home.get("watch_quality")
        if not wq:
            continue
        effects = "; ".join(
            f"without {k}: median {v['without_median_h']} h, p90 {v['without_p90_h']} h, asks {v['without_asks_per_household_month']}/month"
            for k, v in wq["measured_effect_of_device_class"].items()
        )
        console.print(
            f"[bold]{home['home']}[/bold] watch quality: notices trouble in {wq['notice_median_h']} h "
            f"(p90 {wq['notice_p90_h']} h) with {', '.join(wq['devices'])}"
            + (f"; would help: {', '.join(wq['missing'])}" if wq["missing"] else "")
            + (f". Measured: {effects}" if effects else "")
        )
