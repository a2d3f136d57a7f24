"""Settings from the environment (``MIMAMORI_*``) and an optional TOML file.

Precedence: explicit arguments > environment > TOML file (``MIMAMORI_CONFIG`` or ``./mimamori.toml``)
> defaults. No database or broker URL means "start the embedded ones" (see ``mimamori.kernel.embedded``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


def _toml_path() -> Path:
    return Path(os.environ.get("MIMAMORI_CONFIG", "mimamori.toml"))


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "mimamori"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MIMAMORI_", extra="ignore")

    #: postgresql://... ; unset = embedded PostgreSQL under ``data_dir``.
    database_url: str | None = None
    #: mqtt://user:password@host:1883 or mqtts://...; unset = embedded broker.
    mqtt_url: str | None = None
    #: "auto" tries MQTT v5 and falls back to 3.1.1 (e.g. amqtt); ingest then uses a plain subscription.
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = "auto"
    #: Broker credentials when the URL carries none (keeps passwords out of URLs and logs).
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    #: PEM CA bundle that verifies an mqtts:// broker (e.g. from ``mimamori gateway provision --tls-host``);
    #: unset = the system's CAs. A ``?ca=`` in the URL wins.
    mqtt_ca_file: str | None = None
    data_dir: Path = Field(default_factory=default_data_dir)

    # Ingest batching: flush at this many messages or after this long, whichever comes first.
    ingest_batch_size: int = Field(default=5000, ge=1, le=100_000)
    ingest_batch_max_wait_s: float = Field(default=0.05, gt=0, le=10)
    #: MQTT v5 receive maximum: unacknowledged QoS 1 messages the broker may send us. Bounds memory.
    ingest_receive_maximum: int = Field(default=10_000, ge=1, le=65_535)
    ingest_client_id: str | None = None
    ingest_session_expiry_s: int = Field(default=86_400, ge=0)

    gateway_id: str | None = None
    gateway_heartbeat_s: float = Field(default=60.0, gt=0)
    #: After an uplink reconnect, what is published for this many seconds counts as unconfirmed even if
    #: PUBACKed, and is replayed once it ends (a broker that restarted may drop what it had not persisted).
    gateway_settle_s: float = Field(default=30.0, ge=0, le=3600)

    #: Detector scoring interval, in seconds of the service clock.
    detector_tick_s: float = Field(default=60.0, gt=0)
    #: This detector process's share of the fleet, "i/n" (areas hashed to shard i of n); "0/1" = all.
    detector_shard: str = Field(default="0/1", pattern=r"^\d+/\d+$")
    #: How often (real seconds) the detector saves its model, so a restart replays only newer events.
    detector_checkpoint_s: float = Field(default=300.0, gt=0)
    #: Alert worker id (several workers share the step queue through SKIP LOCKED).
    alerts_worker_id: str | None = None

    app_host: str = "127.0.0.1"
    app_port: int = Field(default=8000, ge=0, le=65535)

    #: Signs session CSRF tokens and no-login links (safety-check answers). Unset = a random key kept in
    #: ``<data_dir>/secret_key`` (see ``mimamori.kernel.signing``); set it when several processes serve the app.
    secret_key: SecretStr | None = None
    #: Public base URL of the web app, used in links sent by mail/chat (default http://app_host:app_port).
    public_url: str | None = None
    #: The TLS reverse proxy in front of the app (comma-separated addresses or CIDRs, e.g. the compose
    #: network's proxy container): only these peers' X-Forwarded-For / X-Forwarded-Proto are believed
    #: (the sign-in throttle's client, the Secure cookie, HSTS). Empty: no proxy; the TCP peer is the client.
    trusted_proxies: str = ""
    #: Who may read the app's operator paths (/metrics, /docs, /redoc, /openapi.json) on its public
    #: port: comma-separated addresses or CIDRs of the client (as ``trusted_proxies`` resolves it).
    #: Default: this machine only; add the Prometheus scraper's network. "*" = everyone.
    ops_networks: str = "127.0.0.0/8,::1"

    #: LINE Messaging API channel (issue 16): the channel secret signs webhooks (X-Line-Signature), the
    #: access token sends. Both unset = no LINE. ``line_api_base``: LINE's API (a local server in tests).
    line_channel_secret: SecretStr | None = None
    line_access_token: SecretStr | None = None
    line_api_base: str = "https://api.line.me"
    #: Pushes a month on the channel's plan (the free plan: 200; replies are free). A coordinator is told at 80 %.
    line_monthly_push_budget: int = Field(default=200, ge=0)

    #: Port of the operations endpoint (/metrics, /healthz, /readyz) of a stage process; 0 = off.
    #: The web app serves the same paths on its own port.
    ops_port: int = Field(default=0, ge=0, le=65535)
    ops_host: str = "127.0.0.1"

    log_level: str = "INFO"
    #: "json" = one JSON object per line (for log shippers); "text" = for people.
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - pydantic-settings passes every source by name
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - (no .env, no secrets dir: environment and TOML only)
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_toml_path()),
        )


    def app_url(self) -> str:
        return (self.public_url or f"http://{self.app_host}:{self.app_port}").rstrip("/")


def load_settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
