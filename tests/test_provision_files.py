"""`mimamori gateway provision`: password hashes, ACL, env files, idempotence, rotation, TLS files."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from mimamori.cli import app
from mimamori.gateway import provision


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.integration
@pytest.mark.skipif(not shutil.which("mosquitto_passwd"), reason="needs mosquitto_passwd")
def test_hashes_agree_with_mosquitto_passwd(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    pw.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "alice", "s3cret"], check=True)
    theirs = provision.parse_password_file(pw.read_text())["alice"]
    assert theirs.startswith("$7$")
    assert provision.verify_password("s3cret", theirs)
    assert not provision.verify_password("s3cret!", theirs)
    # Ours, with their salt and iteration count, is byte-for-byte what mosquitto_passwd wrote.
    import base64

    _, _, iterations, salt, _ = theirs.split("$")
    assert provision.hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs


@pytest.mark.unit
def test_gateway_acl_is_confined_to_its_own_topics() -> None:
    acl = provision.render_acl({"gw-1": provision.gateway_acl("gw-1"), "ingest": provision.SERVICE_ROLES["ingest"]})
    block = acl.split("user gw-1\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write mimamori/v1/gw-1/+/event",
        "topic write mimamori/v1/gw-1/status",
        "topic write mimamori/v1/gw-1/heartbeat",
        "topic write mimamori/v1/gw-1/+/ack",
        "topic read mimamori/v1/gw-1/+/cmd",
    ]
    assert "topic read $share/ingest/mimamori/v1/+/+/event" in acl
    for bad, why in (("gw:1", "cannot appear in a broker user name"), ("ingest", "reserved for a service account"),
                     ("+", "bad_gateway_id"), ("a/b", "bad_gateway_id"), ("", "bad_gateway_id")):
        with pytest.raises(ValueError, match=why):
            provision.gateway_acl(bad)


@pytest.mark.unit
def test_provision_is_idempotent_and_rotates_only_on_request(tmp_path: Path) -> None:
    broker, secrets = tmp_path / "mosquitto", tmp_path / "secrets"
    first = provision.provision(broker, secrets, gateways=["gw-1", "gw-2"])
    assert set(first.created) == {"gw-1", "gw-2", *provision.SERVICE_ROLES}
    assert mode(first.stack_env) == 0o600 and mode(first.gateway_env["gw-1"]) == 0o600 and mode(first.password_file) == 0o640
    hashes = provision.parse_password_file(first.password_file.read_text())
    env1 = provision.parse_env(first.gateway_env["gw-1"].read_text())
    assert env1["MIMAMORI_MQTT_USERNAME"] == "gw-1" and env1["MIMAMORI_GATEWAY_ID"] == "gw-1"
    assert provision.verify_password(env1["MIMAMORI_MQTT_PASSWORD"], hashes["gw-1"])
    stack = provision.parse_env(first.stack_env.read_text())
    assert provision.verify_password(stack["MIMAMORI_INGEST_MQTT_PASSWORD"], hashes["ingest"])
    assert stack["POSTGRES_PASSWORD"] and stack["MIMAMORI_SECRET_KEY"]

    # Same inputs again: nothing new, the same files.
    files = {p: p.read_bytes() for p in [first.password_file, first.acl_file, first.stack_env, *first.gateway_env.values()]}
    again = provision.provision(broker, secrets, gateways=["gw-1"])
    assert again.created == again.rotated == [] and again.new_passwords == {}
    assert {p: p.read_bytes() for p in files} == files

    # A new gateway: added, everyone else kept.
    third = provision.provision(broker, secrets, gateways=["gw-3"])
    assert third.created == ["gw-3"] and set(third.new_passwords) == {"gw-3"}
    after = provision.parse_password_file(third.password_file.read_text())
    assert {u: after[u] for u in hashes} == hashes and "gw-3" in after
    assert "user gw-3" in third.acl_file.read_text()

    # Rotation: a new password for gw-1 only; the stack's own secrets never change.
    rotated = provision.provision(broker, secrets, rotate=["gw-1"])
    assert rotated.rotated == ["gw-1"]
    new_env = provision.parse_env(rotated.gateway_env["gw-1"].read_text())
    assert new_env["MIMAMORI_MQTT_PASSWORD"] != env1["MIMAMORI_MQTT_PASSWORD"]
    final = provision.parse_password_file(rotated.password_file.read_text())
    assert provision.verify_password(new_env["MIMAMORI_MQTT_PASSWORD"], final["gw-1"])
    assert final["gw-2"] == hashes["gw-2"]
    assert provision.parse_env(rotated.stack_env.read_text())["POSTGRES_PASSWORD"] == stack["POSTGRES_PASSWORD"]

    # Removal revokes: out of the password file and the ACL, env file deleted.
    gone = provision.provision(broker, secrets, remove=["gw-2"])
    assert gone.removed == ["gw-2"] and "gw-2" not in provision.parse_password_file(gone.password_file.read_text())
    assert "user gw-2" not in gone.acl_file.read_text() and not (secrets / "gateways" / "gw-2.env").exists()

    # A lost env file: the account stays (hash kept) and is reported, never silently reissued.
    (secrets / "gateways" / "gw-3.env").unlink()
    lost = provision.provision(broker, secrets)
    assert lost.unrecoverable == ["gw-3"] and "gw-3" in provision.parse_password_file(lost.password_file.read_text())
    with pytest.raises(ValueError, match="cannot rotate unknown accounts: nobody"):
        provision.provision(broker, secrets, rotate=["nobody"])


@pytest.mark.unit
def test_tls_files_chain_to_the_ca_and_are_kept(tmp_path: Path) -> None:
    files = provision.make_tls(tmp_path / "tls", ["broker.example.org", "127.0.0.1"])
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert mode(files.ca_key) == 0o600 and mode(files.server_key) == 0o640
    before = files.ca_cert.read_bytes(), files.server_cert.read_bytes()
    again = provision.make_tls(tmp_path / "tls", ["broker.example.org"])
    assert (again.ca_cert.read_bytes(), again.server_cert.read_bytes()) == before


@pytest.mark.unit
def test_cli_provision(tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("gw-2\n# a comment\n\ngw-3\n")
    result = CliRunner().invoke(app, [
        "gateway", "provision", "--broker-dir", str(tmp_path / "m"), "--secrets-dir", str(tmp_path / "s"),
        "--gateway", "gw-1", "--gateways-file", str(ids), "--tls-host", "localhost",
        "--uplink-url", "mqtts://broker.example.org:8883", "--json",
    ])
    assert result.exit_code == 0, result.output
    import json

    out = json.loads(result.stdout)
    assert sorted(out["gateway_env"]) == ["gw-1", "gw-2", "gw-3"] and "gw-1" in out["new_passwords"]
    env = provision.parse_env((tmp_path / "s" / "gateways" / "gw-2.env").read_text())
    assert env["MIMAMORI_MQTT_URL"] == "mqtts://broker.example.org:8883"
    assert env["MIMAMORI_MQTT_CA_FILE"].endswith("tls/ca.crt")
    again = CliRunner().invoke(app, ["gateway", "provision", "--broker-dir", str(tmp_path / "m"),
                                     "--secrets-dir", str(tmp_path / "s"), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["created"] == []
