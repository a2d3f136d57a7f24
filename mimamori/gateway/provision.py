"""Broker credentials: per-gateway and per-service MQTT accounts, Mosquitto's password file and ACL,
env files holding the plaintext secrets, and a small CA for TLS.

What a gateway may do (Mosquitto ``acl_file``; everything not granted is denied)::

    user gw-1
    topic write mimamori/v1/gw-1/+/event     # its devices' events
    topic write mimamori/v1/gw-1/status      # online / offline (also its last will)
    topic write mimamori/v1/gw-1/heartbeat
    topic write mimamori/v1/gw-1/+/ack       # what became of a command (a blink seen or not)
    topic read  mimamori/v1/gw-1/+/cmd       # commands for its devices, nobody else's

Service accounts (``SERVICE_ROLES``): ``ingest`` reads every gateway's events, status and heartbeats
(through ``$share/ingest/...``) and publishes ``resend`` commands; ``alerts`` and ``safety`` publish
commands (blink the bulb); ``app`` reads gateway status; ``detector`` nothing (it meets the data in
the database; its account only lets it pass the broker probe at start); ``monitor`` reads ``$SYS``
(the broker's health check, a Prometheus exporter).

Idempotent: re-running keeps every account and password, adds new gateways, and writes the same
files again. ``rotate`` issues new passwords for the named accounts (``"all"``: every MQTT account);
``remove`` revokes gateways. The broker reads the password file and ACL at start and on SIGHUP.

The password file is Mosquitto 2's ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt), what
``mosquitto_passwd`` writes. Plaintext passwords exist only in env files written with mode 0600
(``<secrets>/gateways/<id>.env`` per gateway, ``<secrets>/stack.env`` for the services) and in the
summary returned once.

The pure part (``plan``, ``hash_password``, ``render_*``, ``parse_*``) takes its random source as
an argument; ``provision`` and ``make_tls`` do the file I/O. Split by responsibility: the password
file in ``gateway.passwords``, the CA in ``gateway.tls``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from mimamori.kernel import protocol

from .files import write_file
from .passwords import HASH_ITERATIONS, hash_password, new_password, parse_password_file, render_password_file, verify_password
from .tls import TlsFiles, make_tls

__all__ = [
    "HASH_ITERATIONS", "AclRule", "Plan", "ProvisionResult", "TlsFiles", "gateway_acl", "hash_password", "make_tls", "new_password",
    "parse_password_file", "plan", "provision", "render_password_file", "verify_password",
]

Access = Literal["read", "write", "readwrite"]


@dataclass(frozen=True)
class AclRule:
    access: Access
    topic: str


def _cmd_any() -> str:
    return protocol.command_topic("+", "+")


#: Service accounts and what each may do on the broker.
SERVICE_ROLES: Final[Mapping[str, tuple[AclRule, ...]]] = {
    "ingest": (
        AclRule("read", protocol.EVENT_FILTER),
        AclRule("read", protocol.STATUS_FILTER),
        AclRule("read", protocol.HEARTBEAT_FILTER),
        AclRule("read", protocol.shared(protocol.EVENT_FILTER)),
        AclRule("read", protocol.shared(protocol.STATUS_FILTER)),
        AclRule("read", protocol.shared(protocol.HEARTBEAT_FILTER)),
        AclRule("write", _cmd_any()),  # resend requests for seq gaps
    ),
    "alerts": (AclRule("write", _cmd_any()), AclRule("read", protocol.ACK_FILTER)),  # resident_check: blink the bulb
    "safety": (AclRule("write", _cmd_any()), AclRule("read", protocol.ACK_FILTER)),
    "app": (AclRule("read", protocol.STATUS_FILTER),),
    "detector": (),
    "monitor": (AclRule("read", "$SYS/#"),),
}


def gateway_acl(gateway_id: str) -> tuple[AclRule, ...]:
    """A gateway publishes only under its own id and reads only its own commands."""
    check_gateway_id(gateway_id)
    return (
        AclRule("write", protocol.event_topic(gateway_id, "+")),
        AclRule("write", protocol.status_topic(gateway_id)),
        AclRule("write", protocol.heartbeat_topic(gateway_id)),
        AclRule("write", protocol.ack_topic(gateway_id, "+")),
        AclRule("read", protocol.command_filter(gateway_id)),
    )


def check_gateway_id(gateway_id: str) -> str:
    """A protocol gateway id that can also be a Mosquitto user name (no ``:``) and is no service's."""
    protocol.check_id(gateway_id, "gateway")
    if ":" in gateway_id:
        raise ValueError(f"gateway id {gateway_id!r}: ':' cannot appear in a broker user name")
    if gateway_id in SERVICE_ROLES:
        raise ValueError(f"gateway id {gateway_id!r} is reserved for a service account")
    return gateway_id


#: Where the dynamic-security plugin reads its accounts and roles (written next to ``passwd``).
DYNSEC_FILE: Final = "dynamic-security.json"


def _receive_topic(topic_filter: str) -> str:
    """The topics a subscription delivers: ``$share/<group>/<filter>`` delivers ``<filter>``."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def dynsec_acls(rules: Sequence[AclRule]) -> list[dict[str, object]]:
    """One account's rules as dynamic-security ACLs. Unlike the ``acl_file`` (which Mosquitto 2.0
    checks only when a message is delivered, so any SUBSCRIBE is granted), these are checked when the
    client subscribes: a ``read`` rule grants ``subscribePattern`` on exactly that filter (and
    receiving its topics), a ``write`` rule grants ``publishClientSend``. Nothing else is allowed.
    """
    acls: list[dict[str, object]] = []
    for rule in rules:
        if rule.access in ("read", "readwrite"):
            acls.append({"acltype": "subscribePattern", "topic": rule.topic, "allow": True})
            acls.append({"acltype": "publishClientReceive", "topic": _receive_topic(rule.topic), "allow": True})
            acls.append({"acltype": "unsubscribePattern", "topic": rule.topic, "allow": True})
        if rule.access in ("write", "readwrite"):
            acls.append({"acltype": "publishClientSend", "topic": rule.topic, "allow": True})
    return acls


def render_dynsec(hashes: Mapping[str, str], accounts: Mapping[str, Sequence[AclRule]]) -> str:
    """The dynamic-security plugin's config file (issue 17: the broker locked at subscribe time).

    One client and one role per account, named after it; the ``$7$`` hash of the password file is
    the same PBKDF2-SHA512 the plugin checks (``password``/``salt`` base64, ``iterations``). Default
    access denies publishing, receiving and subscribing; unsubscribing is harmless and allowed. No
    admin client: nobody can change the accounts over ``$CONTROL``; re-run provision and restart
    the broker instead (the plugin reads this file at start).
    """
    import json

    clients: list[dict[str, object]] = []
    roles: list[dict[str, object]] = []
    for user in sorted(accounts):
        encoded = hashes.get(user)
        if encoded is None:
            continue
        _, kind, iterations, salt_b64, digest_b64 = encoded.split("$")
        if kind != "7":
            raise ValueError(f"account {user!r}: only $7$ password hashes can be carried to dynamic security")
        clients.append({"username": user, "textName": "mimamori", "password": digest_b64, "salt": salt_b64,
                        "iterations": int(iterations), "roles": [{"rolename": user}]})
        roles.append({"rolename": user, "acls": dynsec_acls(accounts[user])})
    config = {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": clients,
        "groups": [],
        "roles": roles,
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def render_acl(accounts: Mapping[str, Sequence[AclRule]]) -> str:
    lines = [
        "# Generated by `mimamori gateway provision`; edit the inputs and re-run, not this file.",
        "# Anything not granted here is denied (Mosquitto acl_file).",
    ]
    for user in sorted(accounts):
        lines.append("")
        lines.append(f"user {user}")
        lines.extend(f"topic {rule.access} {rule.topic}" for rule in accounts[user])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Env files
# ---------------------------------------------------------------------------------------------


def parse_env(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def render_env(values: Mapping[str, str], header: str) -> str:
    body = "".join(f"{key}={value}\n" for key, value in values.items())
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def service_password_var(service: str) -> str:
    """The stack env file's variable for a service account's password (docker-compose uses it)."""
    return f"MIMAMORI_{service.upper()}_MQTT_PASSWORD"


def gateway_env(gateway_id: str, password: str, uplink_url: str, ca_file: str | None) -> dict[str, str]:
    values = {
        "MIMAMORI_GATEWAY_ID": gateway_id,
        "MIMAMORI_MQTT_URL": uplink_url,
        "MIMAMORI_MQTT_USERNAME": gateway_id,
        "MIMAMORI_MQTT_PASSWORD": password,
    }
    if ca_file:
        values["MIMAMORI_MQTT_CA_FILE"] = ca_file
    return values


# ---------------------------------------------------------------------------------------------
# The plan, without I/O
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The accounts after this run. ``passwords`` holds plaintext only for accounts whose password is
    known (new, rotated, or read back from an existing env file).
    """

    hashes: dict[str, str]
    acl: dict[str, tuple[AclRule, ...]]
    gateways: list[str]
    passwords: dict[str, str] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unrecoverable: list[str] = field(default_factory=list)  # hash kept, plaintext lost: rotate to reissue


def plan(
    *,
    existing_hashes: Mapping[str, str],
    known_passwords: Mapping[str, str],
    gateways: Iterable[str],
    services: Iterable[str] = tuple(SERVICE_ROLES),
    rotate: Iterable[str] = (),
    remove: Iterable[str] = (),
    password: Callable[[], str] = new_password,
    hasher: Callable[[str], str] = hash_password,
) -> Plan:
    """Accounts to keep, add, rotate and remove. Existing accounts are never dropped unless removed;
    a known password is trusted only if it matches the existing hash.
    """
    services = list(dict.fromkeys(services))
    for s in services:
        if s not in SERVICE_ROLES:
            raise ValueError(f"unknown service account {s!r}; known: {', '.join(SERVICE_ROLES)}")
    removed = {check_gateway_id(g) for g in remove}
    rotate_set = set(rotate)
    existing_gateways = [u for u in existing_hashes if u not in SERVICE_ROLES]
    wanted_gateways = list(dict.fromkeys([*existing_gateways, *(check_gateway_id(g) for g in gateways)]))
    wanted_gateways = [g for g in wanted_gateways if g not in removed]
    kept_services = [u for u in existing_hashes if u in SERVICE_ROLES]
    wanted_services = list(dict.fromkeys([*kept_services, *services]))
    unknown = rotate_set - {"all", *wanted_gateways, *wanted_services}
    if unknown:
        raise ValueError(f"cannot rotate unknown accounts: {', '.join(sorted(unknown))}")

    result = Plan(hashes={}, acl={}, gateways=sorted(wanted_gateways))
    result.removed = sorted(u for u in removed if u in existing_hashes)
    for user in [*wanted_services, *wanted_gateways]:
        result.acl[user] = SERVICE_ROLES[user] if user in SERVICE_ROLES else gateway_acl(user)
        old = existing_hashes.get(user)
        if old is not None and "all" not in rotate_set and user not in rotate_set:
            result.hashes[user] = old
            known = known_passwords.get(user)
            if known is not None and verify_password(known, old):
                result.passwords[user] = known
            else:
                result.unrecoverable.append(user)
            continue
        secret = password()
        result.hashes[user] = hasher(secret)
        result.passwords[user] = secret
        (result.rotated if old is not None else result.created).append(user)
    return result


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


@dataclass
class ProvisionResult:
    password_file: Path
    acl_file: Path
    stack_env: Path
    gateway_env: dict[str, Path]
    created: list[str]
    rotated: list[str]
    removed: list[str]
    unrecoverable: list[str]
    #: Plaintext of new and rotated passwords only: show them once.
    new_passwords: dict[str, str]
    tls: TlsFiles | None = None
    #: The dynamic-security plugin's accounts and ACL (what the shipped broker config loads).
    dynsec_file: Path | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "password_file": str(self.password_file),
            "acl_file": str(self.acl_file),
            "stack_env": str(self.stack_env),
            "gateway_env": {k: str(v) for k, v in self.gateway_env.items()},
            "created": self.created,
            "rotated": self.rotated,
            "removed": self.removed,
            "unrecoverable": self.unrecoverable,
            "new_passwords": self.new_passwords,
            "tls": None if self.tls is None else {k: str(v) for k, v in vars(self.tls).items()},
            "dynsec_file": None if self.dynsec_file is None else str(self.dynsec_file),
        }


def provision(
    broker_dir: Path,
    secrets_dir: Path,
    *,
    gateways: Iterable[str] = (),
    services: Iterable[str] = tuple(SERVICE_ROLES),
    rotate: Iterable[str] = (),
    remove: Iterable[str] = (),
    uplink_url: str | None = None,
    gateway_ca_file: str | None = None,
    tls_hosts: Sequence[str] = (),
) -> ProvisionResult:
    """Write ``<broker_dir>/passwd``, ``<broker_dir>/acl``, ``<secrets_dir>/stack.env`` and
    ``<secrets_dir>/gateways/<id>.env``; with ``tls_hosts``, also a CA and a server certificate in
    ``<broker_dir>/tls`` (kept if present). See the module docstring.

    ``uplink_url`` / ``gateway_ca_file`` go into the gateways' env files; unset, an existing env file
    keeps its values, and a new one gets ``mqtts://localhost:8883`` and ``<broker_dir>/tls/ca.crt``
    when that exists (a gateway on another machine needs the URL it reaches the broker at).
    """
    broker_dir, secrets_dir = Path(broker_dir), Path(secrets_dir)
    password_file, acl_file = broker_dir / "passwd", broker_dir / "acl"
    stack_env_path = secrets_dir / "stack.env"
    gw_dir = secrets_dir / "gateways"

    tls = make_tls(broker_dir / "tls", tls_hosts) if tls_hosts else None
    local_ca = broker_dir / "tls" / "ca.crt"
    default_ca = str(local_ca.resolve()) if local_ca.exists() else None

    existing = parse_password_file(_read(password_file))
    stack_env = parse_env(_read(stack_env_path))
    known: dict[str, str] = {}
    for user in existing:
        if user in SERVICE_ROLES:  # noqa: SIM108
            value = stack_env.get(service_password_var(user))
        else:
            value = parse_env(_read(gw_dir / f"{user}.env")).get("MIMAMORI_MQTT_PASSWORD")
        if value:
            known[user] = value

    result = plan(existing_hashes=existing, known_passwords=known, gateways=gateways, services=services,
                  rotate=rotate, remove=remove)

    write_file(password_file, render_password_file(result.hashes), 0o640)
    write_file(acl_file, render_acl(result.acl), 0o644)
    write_file(broker_dir / DYNSEC_FILE, render_dynsec(result.hashes, result.acl), 0o640)

    # The stack's other secrets are generated once and kept (rotating them is not a file edit: the
    # database already has its password, and signed links in flight would break).
    stack_env.setdefault("POSTGRES_PASSWORD", new_password())
    stack_env.setdefault("MIMAMORI_SECRET_KEY", secrets.token_urlsafe(48))
    for user in result.acl:
        if user in SERVICE_ROLES and user in result.passwords:
            stack_env[service_password_var(user)] = result.passwords[user]
    write_file(stack_env_path, render_env(stack_env, "mimamori stack secrets, written by `mimamori gateway provision`.\n"
               "Keep secret (mode 0600). docker compose --env-file deploy/secrets/stack.env up -d"), 0o600)

    gateway_envs: dict[str, Path] = {}
    for gw in result.gateways:
        path = gw_dir / f"{gw}.env"
        if gw in result.passwords:
            before = parse_env(_read(path))
            values = gateway_env(
                gw, result.passwords[gw],
                uplink_url or before.get("MIMAMORI_MQTT_URL") or "mqtts://localhost:8883",
                gateway_ca_file or before.get("MIMAMORI_MQTT_CA_FILE") or default_ca,
            )
            write_file(path, render_env(values, f"mimamori gateway {gw}: credentials for its uplink.\n"
                                                "Keep secret (mode 0600); copy to the gateway."), 0o600)
        gateway_envs[gw] = path
    for gw in result.removed:
        (gw_dir / f"{gw}.env").unlink(missing_ok=True)

    fresh = set(result.created) | set(result.rotated)
    return ProvisionResult(
        password_file=password_file,
        acl_file=acl_file,
        stack_env=stack_env_path,
        gateway_env=gateway_envs,
        created=result.created,
        rotated=result.rotated,
        removed=result.removed,
        unrecoverable=result.unrecoverable,
        new_passwords={u: p for u, p in result.passwords.items() if u in fresh},
        tls=tls,
        dynsec_file=broker_dir / DYNSEC_FILE,
    )


def gateway_ids_from_database(database_url: str) -> list[str]:
    """Every gateway the coordinators registered (the ``gateways`` table)."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        return [row[0] for row in conn.execute("SELECT gateway_id FROM gateways ORDER BY gateway_id")]


