"""The service commands: `serve` (every stage in one process), one stage each (`ingest`, `detector`, `alerts`,
`safety`, `app`), and `db migrate`."""

from __future__ import annotations

from typing import Annotated

import typer

from mimamori.cli import quake
from mimamori.cli.common import (
    DatabaseOpt,
    JsonOpt,
    MqttOpt,
    cli_settings,
    console,
    print_json,
    stop_on_signals,
)
from mimamori.kernel.clock import SystemClock
from mimamori.stages import run_stages, serve_until_stopped

app = typer.Typer()  # top-level commands, merged into the `mimamori` command

db_app = typer.Typer(no_args_is_help=True, help="Database schema.")


@db_app.command("migrate")
def db_migrate(database_url: DatabaseOpt = None) -> None:
    """Apply pending migrations (starts the embedded PostgreSQL when none is configured)."""
    from mimamori.kernel import db, embedded

    settings = cli_settings(database_url)
    pg = None
    url = settings.database_url
    if not url:
        pg = embedded.start_postgres(settings.data_dir)
        url = pg.url()
    try:
        result = db.migrate(url)
    finally:
        if pg:
            pg.close()
    console.print(f"applied: {result.applied or 'nothing'}; skipped (extension missing): {result.skipped or 'none'}")


@app.command()
def ingest(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Consume gateway events from MQTT into PostgreSQL (exactly once, acked after commit)."""
    run_one_stage("ingest", database_url, mqtt_url)


@app.command()
def serve(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run the service stages in one process (embedded database and broker when none configured)."""
    from mimamori.runtime import services

    settings = cli_settings(database_url, mqtt_url)
    stop = stop_on_signals()
    with services(settings) as svc:
        console.print(
            f"[bold]mimamori serve[/]: {svc.describe()}; web app http://{settings.app_host}:{settings.app_port}/  (Ctrl-C to stop)"
        )
        serve_until_stopped(run_stages(settings, svc, stop), stop, settings)


def run_one_stage(name: str, database_url: str | None, mqtt_url: str | None) -> None:
    from mimamori.runtime import services

    settings = cli_settings(database_url, mqtt_url)
    stop = stop_on_signals()
    with services(settings, start_embedded=False) as svc:
        console.print(f"{name}: {svc.describe()}")
        serve_until_stopped(run_stages(settings, svc, stop, stages=(name,)), stop, settings)


detector_app = typer.Typer(help="The detector: `mimamori detector` runs it; `rebuild` and `status` are for operators.")


ShardOpt = Annotated[
    str | None,
    typer.Option(
        "--shard", envvar="MIMAMORI_DETECTOR_SHARD", help="This process's share of the fleet, i/n (areas hashed to shard i of n)."
    ),
]


@detector_app.callback(invoke_without_command=True)
def detector(ctx: typer.Context, database_url: DatabaseOpt = None, shard: ShardOpt = None) -> None:
    """Score every household on a tick; open, update and close incidents. Its model is saved in the
    database: a start loads it and takes only newer events."""
    if ctx.invoked_subcommand is not None:
        return
    from mimamori.runtime import services

    settings = cli_settings(database_url)
    if shard:
        settings.detector_shard = shard
    stop = stop_on_signals()
    with services(settings, start_embedded=False, need_broker=False) as svc:
        console.print(f"detector (shard {settings.detector_shard}): {svc.describe()}")
        serve_until_stopped(run_stages(settings, svc, stop, stages=("detector",)), stop, settings)


@detector_app.command("rebuild")
def detector_rebuild(database_url: DatabaseOpt = None, shard: ShardOpt = None, json_out: JsonOpt = False) -> None:
    """Repair: rebuild the model from the stored history and save it (not needed in normal operation).
    Stop the shard's running detector first, or it keeps its own state and saves over this one."""
    import time as _time

    from mimamori.detector.service import DetectorService, Shard
    from mimamori.runtime import services

    settings = cli_settings(database_url)
    with services(settings, start_embedded=False, need_broker=False) as svc:
        started = _time.perf_counter()
        service = DetectorService(svc.database_url, SystemClock(), shard=Shard.parse(shard or settings.detector_shard), restore=False)
        result = {
            "shard": service.shard.key,
            "households": service.state.n,
            "devices": len(service.fleet.device_index),
            "seconds": round(_time.perf_counter() - started, 2),
        }
        service.close(save=False)  # rebuild() saved it
    print_json(result) if json_out else console.print(f"detector model rebuilt: {result}")


@detector_app.command("status")
def detector_status(database_url: DatabaseOpt = None) -> None:
    """The saved model per shard and the running detectors' latest ticks."""
    from mimamori.detector.checkpoint import describe
    from mimamori.kernel.db import connect, fetch_dicts
    from mimamori.runtime import services

    settings = cli_settings(database_url)
    with services(settings, start_embedded=False, need_broker=False) as svc, connect(svc.database_url, autocommit=True) as conn:
        print_json({"checkpoints": describe(conn), "runs": fetch_dicts(conn, "SELECT * FROM detector_runs ORDER BY worker")})


@app.command("alerts")
def alerts_worker(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run an alert worker (escalation steps and channel sends); run several to share the load."""
    run_one_stage("alerts", database_url, mqtt_url)


@quake.safety_app.callback(invoke_without_command=True)
def safety_worker(ctx: typer.Context, database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run the safety-check worker (blinks, answer recognition, throttled messages); `feed` and `area` read
    earthquake bulletins and set what starts an area's check."""
    if ctx.invoked_subcommand is None:
        run_one_stage("safety", database_url, mqtt_url)


@app.command("app")
def web_app(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Serve the web app and API."""
    run_one_stage("app", database_url, mqtt_url)
