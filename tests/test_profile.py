"""The device profile and IDevIDs: `trustplane init`, the file's validation
rules, and the certificates checked with the openssl CLI."""
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from backends.device.profile import ProfileError, init_state_dir, load_profile, save_profile
from backends.engine.onboarding.serials import is_generated_form, is_valid_serial, make_serial

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


def openssl(*args) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_serials():
    s = make_serial(NOW)
    assert s.startswith("FOC3047") and is_generated_form(s)  # 2026 = 1996 + 30, ISO week 47
    for bad in ("FOC3047ABC", "foc3047ABCD", "FOC3054ABCD", "FOC3000ABCD", "FO13047ABCD", "FOC3047ABC-"):
        assert not is_generated_form(bad), bad
        assert is_valid_serial(bad), bad  # any vendor's serial is a serial
    for good in ("123", "SN-42/a", "x" * 64, "Ser ial"):
        assert is_valid_serial(good), good
    for bad in ("", "x" * 65, "FOC\n1", " FOC1", "FOC1 ", "A\x00B"):
        assert not is_valid_serial(bad), bad


def test_init_defaults(tmp_path):
    state, lab = tmp_path / "dev", tmp_path / "lab"
    p = init_state_dir(state, lab, now=NOW)
    assert [(n.location, n.role) for n in p.nodes] == [("0/RP0/CPU0", "active"), ("0/RP1/CPU0", "standby")]
    ca_key = (lab / "manufacturer-ca.key").read_bytes()
    assert os.stat(lab / "manufacturer-ca.key").st_mode & 0o777 == 0o600
    for f in state.rglob("*"):
        if f.is_file():
            assert ca_key not in f.read_bytes(), f  # the CA key never enters the device state
    for n in p.nodes:
        assert is_generated_form(n.serial_number)
        assert os.stat(n.idevid_key_path).st_mode & 0o777 == 0o600
        assert "OK" in openssl("verify", "-CAfile", str(lab / "manufacturer-ca.pem"), str(n.idevid_cert_path))
        out = openssl("x509", "-noout", "-subject", "-enddate", "-ext", "basicConstraints,keyUsage",
                      "-in", str(n.idevid_cert_path))
        assert f"serialNumber = {n.serial_number}" in out
        assert "notAfter=Dec 31 23:59:59 9999 GMT" in out
        assert "CA:FALSE" in out and "Digital Signature" in out
    ca = openssl("x509", "-noout", "-ext", "basicConstraints,keyUsage", "-in", str(lab / "manufacturer-ca.pem"))
    assert "CA:TRUE" in ca and "Certificate Sign" in ca
    # two roles, two roots: the MASA root verifies vouchers and issues no device identity
    assert [c.subject.rfc4514_string() for c in p.masa_anchors()] == ["CN=trustplane Lab MASA Root CA,O=trustplane"]
    assert [c.subject.rfc4514_string() for c in p.manufacturer_anchors()] == [
        "CN=trustplane Lab Manufacturing Root CA,O=trustplane"]
    assert p.anchors_in_both_roles() == []
    assert os.stat(lab / "masa-root.key").st_mode & 0o777 == 0o600
    masa_root_key = (lab / "masa-root.key").read_bytes()
    assert all(masa_root_key not in f.read_bytes() for f in state.rglob("*") if f.is_file())
    for n in p.nodes:
        out = subprocess.run(["openssl", "verify", "-CAfile", str(lab / "masa-root.pem"), str(n.idevid_cert_path)],
                             capture_output=True, text=True)
        assert out.returncode != 0
    with pytest.raises(ProfileError, match="already exists"):
        init_state_dir(state, lab, now=NOW)


def test_init_custom_nodes_anchor_and_shared_lab(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=Voucher Signer Root", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "anchor.pem"), "-days", "30"], check=True, capture_output=True)
    lab = tmp_path / "lab"
    p1 = init_state_dir(tmp_path / "a", lab, nodes=[("0/RP0/CPU0", "FOC2231X0AB"), ("0/RP1/CPU0", "SN 42")],
                        masa_anchors=[tmp_path / "anchor.pem"], now=NOW)
    assert [n.serial_number for n in p1.nodes] == ["FOC2231X0AB", "SN 42"]
    subjects = [c.subject.rfc4514_string() for c in p1.masa_anchors()]
    assert "CN=Voucher Signer Root" in subjects
    assert "CN=Voucher Signer Root" not in [c.subject.rfc4514_string() for c in p1.manufacturer_anchors()]
    p3 = init_state_dir(tmp_path / "m", lab, manufacturer_anchors=[tmp_path / "anchor.pem"], now=NOW)
    assert "CN=Voucher Signer Root" in [c.subject.rfc4514_string() for c in p3.manufacturer_anchors()]
    assert p3.anchors_in_both_roles() == []
    p2 = init_state_dir(tmp_path / "b", lab, now=NOW)
    # one lab, one manufacturer: both devices trust the same CA and the same MASA
    assert p1.manufacturer_anchors()[0] == p2.manufacturer_anchors()[0]
    assert p1.masa_anchors()[0] == p2.masa_anchors()[0]
    with pytest.raises(ProfileError, match="printable"):
        init_state_dir(tmp_path / "c", lab, nodes=[("0/RP0/CPU0", "bad\x07")], now=NOW)
    with pytest.raises(ProfileError, match="^manufacturer anchor"):
        init_state_dir(tmp_path / "d", lab, manufacturer_anchors=[tmp_path / "k.pem"], now=NOW)
    with pytest.raises(ProfileError, match="^MASA anchor"):
        init_state_dir(tmp_path / "e", lab, masa_anchors=[tmp_path / "k.pem"], now=NOW)


def test_cli_init(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-subj", "/CN=Vendor MASA", "-keyout", str(tmp_path / "k.pem"),
                    "-out", str(tmp_path / "masa.pem"), "-days", "30"], check=True, capture_output=True)
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "init", "--state-dir", str(tmp_path / "s"),
                          "--node", "0/RP0/CPU0=FDO2312A0BC", "--masa-anchor", str(tmp_path / "masa.pem")],
                         cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD="x"))
    assert out.returncode == 0, out.stderr
    profile = json.loads((tmp_path / "s" / "device.json").read_text())
    assert [n["serial-number"] for n in profile["nodes"]] == ["FDO2312A0BC"]
    assert profile["masa-anchors"] == ["anchors/masa-root.pem", "anchors/masa-0-masa.pem"]
    assert profile["manufacturer-anchors"] == ["anchors/manufacturer-ca.pem"]
    assert (tmp_path / "s-lab" / "manufacturer-ca.key").exists()
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "init", "--state-dir", str(tmp_path / "s")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "already exists" in out.stderr
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "init", "--state-dir", str(tmp_path / "t"),
                          "--node", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "LOCATION=SERIAL" in out.stderr


@pytest.fixture
def state(tmp_path):
    init_state_dir(tmp_path / "dev", tmp_path / "lab", now=NOW)
    return tmp_path / "dev"


def edit(state, change):
    path = state / "device.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(hostname="bad_name"), '"hostname": "bad_name" is not a valid host name'),
    (lambda d: d.pop("hostname"), '"hostname" is missing'),
    (lambda d: d.update(nodes=[]), '"nodes" is empty'),
    (lambda d: d["nodes"][1].update(location="0/RP0/CPU0"), 'location "0/RP0/CPU0" appears twice'),
    (lambda d: d["nodes"][0].update(location="RP0"), 'location "RP0" is not of the form'),
    (lambda d: d["nodes"][0].update({"serial-number": ""}),
     "serial-number '' is not a serial number (1 to 64 printable characters)"),
    (lambda d: d["nodes"][0].update({"serial-number": "S" * 65}), "is not a serial number"),
    (lambda d: d["nodes"][0].update({"serial-number": "123"}), "names no serial '123'"),
    (lambda d: d["nodes"][0].update({"idevid-key": d["nodes"][1]["idevid-key"]}),
     "is not the key of the IDevID certificate 0_RP0_CPU0.pem"),
    (lambda d: d["nodes"][1].update(role="active"), "more than one node has the role active"),
    (lambda d: d["nodes"][0].update(role="primary"), 'role "primary" is not one of'),
    (lambda d: d["nodes"][0].update({"idevid-cert": "../../etc/passwd"}), "is outside the state directory"),
    (lambda d: d["nodes"][0].update({"idevid-cert": "idevid/missing.pem"}), 'cannot read "idevid/missing.pem"'),
    (lambda d: d["nodes"][0].update({"idevid-cert": "device.json"}), "not a PEM certificate"),
    (lambda d: d["chassis"].update({"serial-number": "a\tb"}), "chassis: serial-number"),
    (lambda d: d.update({"masa-anchors": "anchors/masa-root.pem"}), '"masa-anchors" must be a list'),
    (lambda d: d.update({"masa-anchors": ["idevid/0_RP0_CPU0.key"]}), 'masa-anchors[0]: "idevid/0_RP0_CPU0.key"'),
    (lambda d: d.update(nodes="x"), '"nodes" must be a list'),
    (lambda d: d.update({"package-signing-keys": {"ab": "xr"}}), '"package-signing-keys" must be a list'),
    (lambda d: d.update({"package-signing-keys": [{"key": "device.json", "origin": "xr"}]}),
     "not an OpenPGP public key"),
    (lambda d: d.update({"package-signing-keys": [{"key": "device.json", "origin": "owner"}]}),
     'origin "owner" is not one of xr, partner'),
])
def test_profile_rules(state, change, message):
    edit(state, change)
    with pytest.raises(ProfileError) as exc:
        load_profile(state)
    assert message in str(exc.value)
    assert str(state / "device.json") in str(exc.value)


def test_bad_json(state):
    (state / "device.json").write_text("{not json")
    with pytest.raises(ProfileError, match="not readable JSON"):
        load_profile(state)


def test_save_round_trip_and_atomicity(state, monkeypatch):
    p = load_profile(state)
    p.hostname, p.domain_name = "edge-2", "lab.example"
    save_profile(p)
    again = load_profile(state)
    assert (again.hostname, again.domain_name) == ("edge-2", "lab.example")
    assert [n.location for n in again.nodes] == [n.location for n in p.nodes]
    before = (state / "device.json").read_bytes()

    def broken(*a, **kw):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken)
    p.hostname = "never"
    with pytest.raises(OSError):
        save_profile(p)
    assert (state / "device.json").read_bytes() == before
    assert not [f for f in state.iterdir() if f.name.startswith(".device.json")]
