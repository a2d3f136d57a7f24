"""The ``mimamori`` command: the composition root's front door. Each module holds one family of commands;
stage modules are imported inside the commands, so `mimamori --help` stays fast."""

from __future__ import annotations

import typer

from mimamori.cli import bench, gateway, quake, services, tools

app = typer.Typer(no_args_is_help=True, add_completion=False, help="見守り mimamori: a watch-over service.")
for family in (services, tools):
    app.registered_commands.extend(family.app.registered_commands)
app.add_typer(services.db_app, name="db")
app.add_typer(services.detector_app, name="detector")
app.add_typer(gateway.gateway_app, name="gateway")
app.add_typer(bench.bench_app, name="bench")
app.add_typer(quake.safety_app, name="safety")


def main() -> None:
    app()
