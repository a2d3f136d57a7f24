"""`mimamori bench ...`: the benchmarks, JSON output with --json."""

from __future__ import annotations

import json
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
    print_json,
)

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON output with --json).")


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(min=1000)] = 200_000,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: MqttOpt = None,
) -> None:
    """Ingest throughput, published → committed, against a null sink on the same client stack."""
    from mimamori.bench.ingest_bench import DrainStalled, run_ingest_bench
    from mimamori.kernel.db import scratch_database
    from mimamori.runtime import services

    settings = cli_settings(database_url, mqtt_url)
    try:
        with services(settings) as svc, scratch_database(svc.database_url, "mimamori_bench") as bench_db:
            result = run_ingest_bench(bench_db, svc.mqtt_url, events=events)
    except DrainStalled as exc:
        console.print(f"[red]bench ingest stalled:[/] {exc}")
        raise typer.Exit(2) from None
    if json_out:
        print_json(result)
    else:
        console.print(result)


@bench_app.command("detector")
def bench_detector(
    households: Annotated[int | None, typer.Option(min=1, help="Default 1,000,000 (pass) or 1,000 (--restart).")] = None,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start, pair a device, SIGKILL and restart real detector processes on a town with weeks of history in the database.",
        ),
    ] = False,
    days: Annotated[float, typer.Option(min=1, help="--restart: days of history.")] = 56.0,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """One scoring pass over N households (pure model, one core) and the state size per household; with
    --restart, the detector's cold start, pairing and restart at town scale on the real database."""
    if not restart:
        from mimamori.bench.detector_bench import run_detector_bench

        cli_settings()
        result = run_detector_bench(households or 1_000_000)
        print_json(result) if json_out else console.print(result)
        return
    from mimamori.bench.detector_restart import run_restart_bench
    from mimamori.kernel.db import scratch_database

    settings = cli_settings(database_url)
    with admin_database(settings) as admin_url, scratch_database(admin_url, "mimamori_bench_detector") as bench_db:
        result = run_restart_bench(bench_db, households=households or 1000, days=days, progress=console.print)
    print_json(result) if json_out else console.print(result)


@bench_app.command("alerts")
def bench_alerts(
    incidents: Annotated[int, typer.Option(min=10)] = 1000,
    rate: Annotated[float, typer.Option(help="Incidents opened per second.")] = 20.0,
    workers: Annotated[int, typer.Option(min=1, max=16)] = 1,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Incident opened → notification accepted by the channel (in-app, e-mail to a local SMTP server)."""
    from mimamori.bench.alerts_bench import run_alerts_bench
    from mimamori.runtime import services

    settings = cli_settings(database_url)
    with services(settings) as svc:
        result = run_alerts_bench(svc.database_url, incidents=incidents, rate_per_s=rate, workers=workers)
    print_json(result) if json_out else console.print(result)


@bench_app.command("safety")
def bench_safety(
    households: Annotated[int, typer.Option(min=10)] = 2000,
    seed: int = 0,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """An area safety check over N homes on the real services: start, recognition latency, board query,
    blinks and throttled messages (a scratch database and a Mosquitto of its own)."""
    from mimamori.bench.safety_bench import run_safety_bench
    from mimamori.runtime import services

    settings = cli_settings(database_url)
    with services(settings) as svc:  # the database (embedded if none); the bench starts a broker of its own
        result = run_safety_bench(households, seed=seed, database_url=svc.database_url)
    print_json(result) if json_out else console.print(result)


@bench_app.command("all")
def bench_all(
    events: Annotated[int, typer.Option(min=1000, help="Ingest events.")] = 200_000,
    households: Annotated[int, typer.Option(min=1, help="Detector households.")] = 1_000_000,
    incidents: Annotated[int, typer.Option(min=10, help="Alert incidents (opened at 20/s).")] = 1000,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON to this file.")] = None,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: Annotated[
        str | None, typer.Option("--mqtt-url", help="A broker with the project's limits; unset = a Mosquitto started for the run.")
    ] = None,
) -> None:
    """Ingest, detector and alerts benchmarks plus memory figures, in one run, one JSON object."""
    from mimamori.bench.bench_all import run_bench_all

    settings = cli_settings(database_url)
    with admin_database(settings) as admin_url:
        result = run_bench_all(admin_url, mqtt_url=mqtt_url, events=events, households=households, incidents=incidents)
    if out:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if json_out:
        print_json(result)
        return
    from rich.table import Table

    table = Table(title="mimamori bench all")
    for col in ("area", "measure", "value", "unit"):
        table.add_column(col)
    for row in result["table"]:
        table.add_row(*(str(row[k]) for k in ("area", "measure", "value", "unit")))
    Console().print(table)
