"""`mimamori gateway`: a home's gateway, its replay and listen tools, and broker provisioning."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mimamori.cli.common import (
    DatabaseOpt,
    JsonOpt,
    MqttOpt,
    cli_settings,
    console,
    print_json,
)

gateway_app = typer.Typer(
    help="A home's gateway: `mimamori gateway --gateway-id ID` runs its uplink; `mimamori gateway provision` issues broker credentials."
)


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    gateway_id: Annotated[str | None, typer.Option("--gateway-id", envvar="MIMAMORI_GATEWAY_ID", help="This gateway's id.")] = None,
    local_url: Annotated[
        str, typer.Option("--local-mqtt-url", help="The home's broker (Zigbee2MQTT, Tasmota, Shelly, native devices).")
    ] = "mqtt://127.0.0.1:1883",
    outbox: Annotated[Path | None, typer.Option(help="Outbox file (SQLite); default under the data dir.")] = None,
    mqtt_url: MqttOpt = None,
    z2m_base_topic: Annotated[
        list[str] | None, typer.Option(envvar="MIMAMORI_Z2M_BASE_TOPIC", help="Zigbee2MQTT base_topic (repeatable; default zigbee2mqtt).")
    ] = None,
    tasmota_fulltopic: Annotated[
        list[str] | None,
        typer.Option(envvar="MIMAMORI_TASMOTA_FULLTOPIC", help="Tasmota FullTopic (repeatable; default %prefix%/%topic%/)."),
    ] = None,
    shelly_prefix: Annotated[
        list[str] | None,
        typer.Option(
            envvar="MIMAMORI_SHELLY_PREFIX",
            help="A Shelly Gen2+ topic prefix to subscribe to besides the defaults (repeatable; may contain /).",
        ),
    ] = None,
    never_switch: Annotated[
        list[str] | None,
        typer.Option(
            envvar="MIMAMORI_NEVER_SWITCH", help="A device id this gateway must never switch, e.g. a plug powering a fridge (repeatable)."
        ),
    ] = None,
) -> None:
    """Bridge a home's devices to the service (durable outbox, uplink over MQTT)."""
    layout = _gateway_layout(z2m_base_topic, tasmota_fulltopic, shelly_prefix)
    ctx.obj = {"layout": layout}
    if ctx.invoked_subcommand is not None:
        return
    if not gateway_id:
        raise typer.BadParameter("required (or MIMAMORI_GATEWAY_ID)", param_hint="--gateway-id")
    from mimamori.gateway.service import run_gateway

    settings = cli_settings(mqtt_url=mqtt_url)
    if not settings.mqtt_url:
        from mimamori.runtime import read_runtime

        runtime = read_runtime(settings)
        if not runtime:
            raise typer.BadParameter("no uplink broker: set --mqtt-url / MIMAMORI_MQTT_URL or run `mimamori serve`")
        settings.mqtt_url = str(runtime["mqtt_url"])
    outbox_path = outbox or settings.data_dir / "gateway" / f"{gateway_id}.sqlite3"
    outbox_path.parent.mkdir(parents=True, exist_ok=True)
    run_gateway(
        settings,
        gateway_id=gateway_id,
        local_url=local_url,
        outbox_path=outbox_path,
        layout=layout,
        never_switch=frozenset(never_switch or ()),
    )


def _gateway_layout(z2m: list[str] | None, tasmota: list[str] | None, shelly: list[str] | None) -> Any:
    from mimamori.gateway.adapters import Layout

    defaults = Layout()
    return Layout(tuple(z2m or defaults.z2m_base_topics), tuple(tasmota or defaults.tasmota_full_topics), tuple(shelly or ()))


@gateway_app.command("replay")
def gateway_replay(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help='One JSON object a line: {"topic": ..., "payload": "<text>", "retain": false}.')],
    fresh: Annotated[
        bool, typer.Option("--fresh", help="As a gateway started for the first time (default: one that has seen these devices).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """What the gateway makes of a captured home: one line per message (outcome, kind, device ...)."""
    from mimamori.gateway import replay

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
    from mimamori.gateway import replay

    emit = (lambda r: print(json.dumps(r, ensure_ascii=False), flush=True)) if json_out else _print_gateway_row
    counts = replay.listen(local_url, minutes, emit, layout=ctx.obj["layout"])
    print(f"{sum(counts.values())} messages: {counts}", file=sys.stderr)


def _print_gateway_row(r: dict[str, Any]) -> None:
    what = r["outcome"] + (f" {r['kind']}" if r["kind"] else "") + (f" ({r['reason']})" if r["reason"] else "")
    channel = "" if r["channel"] is None else f"#{r['channel']}"
    console.print(
        f"{r['topic']}  →  {what}  {r['device_name'] or ''}{channel}  {r['device_id'] or ''}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


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
    gateway: Annotated[list[str] | None, typer.Option("--gateway", "-g", help="A gateway id to add (repeatable).")] = None,
    gateways_file: Annotated[Path | None, typer.Option(help="A file of gateway ids, one a line (# comments).")] = None,
    from_database: Annotated[bool, typer.Option("--from-database", help="Add every gateway in the database's gateways table.")] = False,
    rotate: Annotated[
        list[str] | None, typer.Option(help="Issue a new password for this account (repeatable; 'all' = every MQTT account).")
    ] = None,
    remove: Annotated[list[str] | None, typer.Option(help="Revoke this gateway (repeatable).")] = None,
    broker_dir: Annotated[Path, typer.Option(help="Where the broker's passwd, acl and tls/ go.")] = Path("deploy/mosquitto"),
    secrets_dir: Annotated[Path, typer.Option(help="Where stack.env and gateways/<id>.env (mode 0600) go.")] = Path("deploy/secrets"),
    uplink_url: Annotated[
        str | None, typer.Option(help="The broker URL written into gateway env files (e.g. mqtts://broker.example.org:8883).")
    ] = None,
    gateway_ca_file: Annotated[
        str | None, typer.Option(help="CA file path written into gateway env files (default: <broker-dir>/tls/ca.crt if present).")
    ] = None,
    tls_host: Annotated[
        list[str] | None, typer.Option(help="Make a CA and a server certificate for this broker name/IP (repeatable) in <broker-dir>/tls.")
    ] = None,
    database_url: DatabaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Per-gateway and per-service broker credentials: Mosquitto password file + ACL, env files, TLS (idempotent)."""
    from mimamori.gateway import provision

    ids = list(gateway or [])
    if gateways_file:
        ids += [line.split("#", 1)[0].strip() for line in gateways_file.read_text().splitlines() if line.split("#", 1)[0].strip()]
    if from_database:
        settings = cli_settings(database_url)
        if not settings.database_url:
            raise typer.BadParameter("needs --database-url / MIMAMORI_DATABASE_URL", param_hint="--from-database")
        ids += provision.gateway_ids_from_database(settings.database_url)
    try:
        result = provision.provision(
            broker_dir,
            secrets_dir,
            gateways=ids,
            rotate=rotate or (),
            remove=remove or (),
            uplink_url=uplink_url,
            gateway_ca_file=gateway_ca_file,
            tls_hosts=tls_host or (),
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if json_out:
        print_json(result.to_json())
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
