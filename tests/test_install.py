"""Software install and RPM fingerprints, end to end: real RPMs built with rpmbuild,
added and activated over NETCONF, read back with ncclient, tampered with on disk."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations import RPCError

from backends.engine.software import rpm
from conftest import PASSWORD, ROOT, ServerProcess, rpc
from diskfull import small_tmpfs
from rpms import build_rpm, export_public, make_gpg_key, shell_fingerprint, zstd_claiming_a_big_window

ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-spirit-install-act"
SPIRIT = "http://cisco.com/ns/yang/Cisco-IOS-XR-spirit-install-instmgr-oper"
XR7 = "http://cisco.com/ns/yang/Cisco-IOS-XR-install-oper"
CFG = "http://cisco.com/ns/yang/Cisco-IOS-XR-install-cfg"
TPI = "urn:trustplane:yang:trustplane-install"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"

AGENT_FILES = {"/opt/agent/bin/agent": b"#!/bin/sh\necho agent\n", "/opt/agent/etc/agent.conf": b"level=1\n"}
MCAST_FILES = {"/opt/mcast/lib/libmcast.so": os.urandom(300_000)}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    work = tmp_path_factory.mktemp("rpms")
    key = make_gpg_key(work / "gnupg")
    stranger = make_gpg_key(work / "gnupg-stranger", "Someone Else <else@example.net>")
    agent = build_rpm(work, "agent", AGENT_FILES, dirs=("/opt/agent", "/opt/agent/bin", "/opt/agent/etc"),
                      modes={"/opt/agent/bin/agent": 0o755}, symlinks={"/opt/agent/bin/ag": "agent"},
                      payload="w19.zstdio")
    mcast = build_rpm(work, "mcast", MCAST_FILES, version="2.0.0.0", release="r731",
                      dirs=("/opt/mcast", "/opt/mcast/lib"), payload="w6.xzdio", key=key)
    other = build_rpm(work, "other", {"/opt/other/x": b"x"}, key=stranger)
    return {"agent": agent, "mcast": mcast, "other": other, "key": key, "stranger": stranger, "work": work}


def make_state(state, packages) -> None:
    """A state directory whose profile lists the test signing key as the vendor's, with the
    test packages in harddisk:/pkgs."""
    subprocess.run([sys.executable, "-m", "trustplane.cli", "init", "--state-dir", str(state)],
                   check=True, capture_output=True, env=dict(os.environ, TRUSTPLANE_ADMIN_PASSWORD=PASSWORD),
                   cwd=ROOT)
    profile = json.loads((state / "device.json").read_text())
    (state / "package-keys").mkdir()
    (state / "package-keys" / "vendor.asc").write_bytes(export_public(packages["key"]))
    profile["package-signing-keys"] = [{"key": "package-keys/vendor.asc", "origin": "xr"}]
    (state / "device.json").write_text(json.dumps(profile))
    pkgs = state / "fs" / "harddisk:" / "pkgs"
    pkgs.mkdir(parents=True)
    for name in ("agent", "mcast", "other"):
        shutil.copy(packages[name], pkgs)


@pytest.fixture(scope="module")
def device(tmp_path_factory, packages):
    state = tmp_path_factory.mktemp("inst") / "state"
    make_state(state, packages)
    srv = ServerProcess(state).start()
    yield srv
    srv.stop()


def call(m, xml: str) -> etree._Element:
    return etree.fromstring(rpc(m, xml).xml.encode())


def act(m, op: str, body: str = "") -> etree._Element:
    return call(m, f'<{op} xmlns="{ACT}">{body}</{op}>')


def names(*pkgs: str) -> str:
    return "<packages>" + "".join(f"<packagename>{p}</packagename>" for p in pkgs) + "</packages>"


def active_summary(m, ns: str = SPIRIT) -> etree._Element:
    reply = m.get(("subtree", f'<install xmlns="{ns}"><packages><active><summary/></active></packages></install>'))
    return reply.data_ele.find(f"{{{ns}}}install/{{{ns}}}packages/{{{ns}}}active/{{{ns}}}summary")


def package_rows(summary, ns: str = SPIRIT) -> dict[str, dict[str, str]]:
    out = {}
    for p in summary.findall(f"{{{ns}}}package"):
        row = {etree.QName(c).localname: c.text for c in p if len(c) == 0}
        for c in p.find(f"{{{ns}}}rpm-fingerprint"):
            row[etree.QName(c).localname] = c.text
        out[row["name"]] = row
    return out


def wait_run_time(m, name: str, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        row = package_rows(active_summary(m)).get(name)
        if row and row["rpm-fingerprint-run-time"] != "0":
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"no run-time fingerprint for {name}: {row}")
        time.sleep(0.1)


def error_of(exc: RPCError) -> tuple[str, str]:
    app = exc.xml.find("{urn:ietf:params:xml:ns:netconf:base:1.0}error-app-tag")
    return exc.tag, app.text if app is not None else None


@pytest.fixture(scope="module")
def installed(device):
    """agent and mcast added in one operation and activated by its ID."""
    with device.connect() as m:
        reply = act(m, "install-add", "<packagepath>harddisk:/pkgs</packagepath>"
                    "<packagename>agent-1.0.0-r1.noarch.rpm</packagename>"
                    "<packagename>mcast-2.0.0.0-r731.noarch.rpm</packagename>")
        op = reply.xpath("//*[local-name()='op-id']")[0].text
        act(m, "install-activate", f"<ids><id-no>{op}</id-no></ids>")
        wait_run_time(m, "agent")
        wait_run_time(m, "mcast")
    return device


def test_active_packages_read_like_the_seed_example(installed, packages):
    root = installed.state_dir / "install" / "root"
    with installed.connect() as m:
        summary = active_summary(m)
        assert summary.findtext(f"{{{SPIRIT}}}rpm-fingerprint-status") == "generation-up-to-date"
        stamp = summary.findtext(f"{{{SPIRIT}}}rpm-fingerprint-timestamp")
        time.strptime(stamp, "%a %b %d %H:%M:%S %Y")
        rows = package_rows(summary)
        mcast = rows["mcast"]
        assert (mcast["version"], mcast["release"], mcast["architecture"]) == ("2.0.0.0", "r731", "noarch")
        assert mcast["gpg-key-id"] == packages["key"].key_id and mcast["origin"] == "xr"
        assert rows["agent"]["gpg-key-id"] == "0" and rows["agent"]["origin"] == "owner"
        for row in rows.values():
            assert row["rpm-fingerprint-install-time"] == row["rpm-fingerprint-run-time"]
        # rpm itself reports the same signer
        rpm_says = subprocess.run(["rpm", "-qp", "--qf", "%{RSAHEADER:pgpsig}", str(packages["mcast"])],
                                  capture_output=True, text=True).stdout
        assert rpm_says.endswith("Key ID " + packages["key"].key_id)
        # the README's coreutils recipe gives the same install-time fingerprint
        agent_paths = ["/opt/agent", "/opt/agent/bin", "/opt/agent/bin/ag", "/opt/agent/bin/agent",
                       "/opt/agent/etc", "/opt/agent/etc/agent.conf"]
        assert shell_fingerprint(root, agent_paths) == rows["agent"]["rpm-fingerprint-install-time"]
        assert (root / "opt/agent/bin/agent").read_bytes() == AGENT_FILES["/opt/agent/bin/agent"]
        assert os.stat(root / "opt/agent/bin/agent").st_mode & 0o777 == 0o755
        # the XR7 module serves the same subtree, per node too
        assert package_rows(active_summary(m, XR7), XR7) == rows
        nodes = m.get(("subtree", f'<install xmlns="{XR7}"><packages><active><nodes/></active></packages>'
                                  "</install>")).data_ele
        locs = [n.text for n in nodes.iter(f"{{{XR7}}}node") if n.text and "/" in n.text]
        assert locs == ["0/RP0/CPU0", "0/RP1/CPU0"]


def test_install_time_fingerprint_matches_rpm2cpio_extraction(installed, packages, tmp_path):
    """An independent extraction (rpm2cpio | cpio) fingerprints the same as the device."""
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(f"rpm2cpio {packages['agent']} | cpio -idm --quiet", shell=True, cwd=out, check=True)
    paths = subprocess.run(["rpm", "-qlp", str(packages["agent"])], capture_output=True, text=True).stdout.split()
    for d in ("opt/agent", "opt/agent/bin", "opt/agent/etc"):
        os.chmod(out / d, 0o755)
    with installed.connect() as m:
        row = package_rows(active_summary(m))["agent"]
    assert shell_fingerprint(out, paths) == row["rpm-fingerprint-install-time"]


def test_tamper_drift_verify_and_notification(installed, tmp_path):
    root = installed.state_dir / "install" / "root"
    with installed.connect() as m:
        rows = package_rows(active_summary(m))
        kgv = {"packages": [
            {"name": "agent", "version": "1.0.0", "release": "r1", "fingerprint": rows["agent"]["rpm-fingerprint-install-time"]},
            {"name": "mcast", "version": "2.0.0.0", "release": "r731", "fingerprint": "ab" * 32}]}
        (installed.state_dir / "fs" / "harddisk:" / "kgv.json").write_text(json.dumps(kgv))
        reply = call(m, f'<load-known-good-values xmlns="{TPI}"><path>harddisk:/kgv.json</path></load-known-good-values>')
        assert reply.xpath("//*[local-name()='entries']")[0].text == "2"

        reply = call(m, f'<verify-packages xmlns="{TPI}"/>')
        results = {p.findtext(f"{{{TPI}}}name"): p.findtext(f"{{{TPI}}}result")
                   for p in reply.xpath("//*[local-name()='package']")}
        assert results == {"agent": "genuine", "mcast": "install-time-mismatch"}

        m.create_subscription(stream_name="NETCONF", filter=("subtree", f'<package-fingerprint-mismatch xmlns="{TPI}"/>'))
        conf = root / "opt/agent/etc/agent.conf"
        conf.write_bytes(b"level=9\n")
        reply = call(m, f'<verify-packages xmlns="{TPI}"><package>agent</package></verify-packages>')
        assert reply.xpath("//*[local-name()='result']")[0].text == "run-time-drift"
        note = m.take_notification(timeout=10)
        assert note is not None
        ev = note.notification_ele.find(f"{{{TPI}}}package-fingerprint-mismatch")
        assert ev.findtext(f"{{{TPI}}}name") == "agent"
        assert ev.findtext(f"{{{TPI}}}result") == "run-time-drift"
        assert ev.findtext(f"{{{TPI}}}detected-by") == "verify"

        row = package_rows(active_summary(m))["agent"]
        assert row["rpm-fingerprint-run-time"] != row["rpm-fingerprint-install-time"]
        conf.write_bytes(AGENT_FILES["/opt/agent/etc/agent.conf"])
        act(m, "install-verify")
        row = package_rows(active_summary(m))["agent"]
        assert row["rpm-fingerprint-run-time"] == row["rpm-fingerprint-install-time"]

        # each kind of change moves the run-time fingerprint, and undoing it restores it
        tool = root / "opt/agent/bin/agent"
        changes = [
            (lambda: os.chmod(tool, 0o777), lambda: os.chmod(tool, 0o755)),
            (lambda: (root / "opt/agent/bin/extra").write_bytes(b"x"), lambda: (root / "opt/agent/bin/extra").unlink()),
            (lambda: tool.rename(tmp_path / "agent"), lambda: (tmp_path / "agent").rename(tool)),
        ]
        for change, undo in changes:
            change()
            act(m, "install-verify")
            drifted = package_rows(active_summary(m))["agent"]
            undo()
            act(m, "install-verify")
            restored = package_rows(active_summary(m))["agent"]
            assert drifted["rpm-fingerprint-run-time"] != drifted["rpm-fingerprint-install-time"]
            assert restored["rpm-fingerprint-run-time"] == restored["rpm-fingerprint-install-time"]

        integrity = m.get(("subtree", f'<install-integrity xmlns="{TPI}"/>')).data_ele
        assert integrity.xpath("//*[local-name()='source']")[0].text == "harddisk:/kgv.json"


def test_sessions_keep_answering_while_fingerprints_are_collected(installed):
    big = installed.state_dir / "install" / "root" / "opt/agent/big.img"
    with open(big, "wb") as f:
        f.truncate(1024 ** 3)  # sparse: hashing it is CPU work, not disk
    seen, answered = set(), 0
    try:
        with installed.connect() as a, installed.connect() as b:
            worker = threading.Thread(target=act, args=(a, "install-verify"))
            worker.start()
            while worker.is_alive():
                seen.add(active_summary(b).findtext(f"{{{SPIRIT}}}rpm-fingerprint-status"))
                answered += 1
            worker.join()
    finally:
        big.unlink()
    assert "generation-in-progress" in seen and answered > 1
    with installed.connect() as m:
        act(m, "install-verify")
        assert active_summary(m).findtext(f"{{{SPIRIT}}}rpm-fingerprint-status") == "generation-up-to-date"


def test_signatures_decide_the_origin(installed, packages):
    """A package the profile's key verifies is xr; another signer is owner; a signature the
    profile's key does not verify is refused."""
    data = packages["mcast"].read_bytes()
    with open(packages["mcast"], "rb") as f:
        sig = rpm.read_package(f).header_signature
    at = data.index(sig) + len(sig) - 1
    forged = installed.state_dir / "fs" / "harddisk:" / "bad" / "forged.rpm"
    forged.parent.mkdir(exist_ok=True)
    forged.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    with installed.connect() as m:
        with pytest.raises(RPCError) as err:
            act(m, "install-add", "<packagepath>harddisk:/bad/forged.rpm</packagepath>")
        assert error_of(err.value) == ("invalid-value", "signature-invalid")
        act(m, "install-add", "<packagepath>harddisk:/pkgs/other-1.0.0-r1.noarch.rpm</packagepath>")
        act(m, "install-activate", names("other"))
        row = wait_run_time(m, "other")
        assert row["gpg-key-id"] == packages["stranger"].key_id and row["origin"] == "owner"
        act(m, "install-deactivate", names("other"))
        act(m, "install-remove", names("other"))


@pytest.mark.parametrize("make, path, tag, app_tag", [
    ("corrupt-payload", "harddisk:/bad/agent.rpm", "invalid-value", "rpm-corrupt"),
    ("corrupt-header", "harddisk:/bad/agent.rpm", "invalid-value", "rpm-corrupt"),
    ("huge-window", "harddisk:/bad/agent.rpm", "invalid-value", "rpm-too-large"),
    ("not-rpm", "harddisk:/bad/notes.rpm", "invalid-value", "not-an-rpm"),
    (None, "harddisk:/bad/missing.rpm", "data-missing", "file-not-found"),
    (None, "harddisk:/../device.json", "invalid-value", "path-escape"),
    (None, "/etc/passwd", "invalid-value", "bad-device-path"),
])
def test_bad_packages_are_refused_and_change_nothing(installed, packages, make, path, tag, app_tag):
    bad = installed.state_dir / "fs" / "harddisk:" / "bad"
    bad.mkdir(exist_ok=True)
    data = packages["agent"].read_bytes()
    if make == "corrupt-payload":
        (bad / "agent.rpm").write_bytes(data[:-40] + bytes(b ^ 0xFF for b in data[-40:]))
    elif make == "corrupt-header":
        at = data.index(b"agent test package")
        (bad / "agent.rpm").write_bytes(data[:at] + b"AGENT" + data[at + 5:])
    elif make == "huge-window":  # a zstd payload that asks for a 2 GiB window
        with open(packages["agent"], "rb") as f:
            at = rpm.read_package(f).payload_offset
        data = bytearray(data)
        zstd_claiming_a_big_window(data, at)
        (bad / "agent.rpm").write_bytes(data)
    elif make == "not-rpm":
        (bad / "notes.rpm").write_text("just text\n")
    state_before = (installed.state_dir / "install" / "state.json").read_bytes()
    repo_before = sorted(os.listdir(installed.state_dir / "install" / "repo"))
    with installed.connect() as m:
        with pytest.raises(RPCError) as err:
            act(m, "install-add", f"<packagepath>{path}</packagepath>")
    assert error_of(err.value) == (tag, app_tag)
    assert (installed.state_dir / "install" / "state.json").read_bytes() == state_before
    assert sorted(os.listdir(installed.state_dir / "install" / "repo")) == repo_before


def test_activating_a_package_never_added_is_refused(installed):
    state_before = (installed.state_dir / "install" / "state.json").read_bytes()
    with installed.connect() as m:
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", names("nosuch-1.0-r1"))
        assert error_of(err.value) == ("data-missing", "package-not-added")
        assert "nosuch-1.0-r1" in err.value.message
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", "<ids><id-no>999</id-no></ids>")
        assert error_of(err.value) == ("data-missing", "unknown-install-id")
        with pytest.raises(RPCError) as err:
            act(m, "install-activate")
        assert error_of(err.value) == ("missing-element", "no-packages")
    assert (installed.state_dir / "install" / "state.json").read_bytes() == state_before


def test_install_ids_and_packagepath_as_the_ios_xr_model_types_them(installed):
    """ids/id-no is a string and install-add/packagepath optional in the IOS XR model: a non-numeric ID and a
    missing packagepath are precise errors that change nothing."""
    state_before = (installed.state_dir / "install" / "state.json").read_bytes()
    with installed.connect() as m:
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", "<ids><id-no>first</id-no></ids>")
        assert error_of(err.value) == ("invalid-value", "invalid-install-id")
        assert "'first' is not a number" in err.value.message
        with pytest.raises(RPCError) as err:
            act(m, "install-add", "<packagename>agent-1.0.0-r1.noarch.rpm</packagename>")
        assert error_of(err.value) == ("missing-element", "no-packagepath")
    assert (installed.state_dir / "install" / "state.json").read_bytes() == state_before


def test_commit_deactivate_remove_cycle(installed, packages):
    root = installed.state_dir / "install" / "root"
    with installed.connect() as m:
        act(m, "install-commit")
        committed = m.get(("subtree", f'<install xmlns="{SPIRIT}"><packages><committed><summary/></committed>'
                                      "</packages></install>")).data_ele
        assert sorted(e.text for e in committed.iter(f"{{{SPIRIT}}}name")) == ["agent", "mcast"]
        with pytest.raises(RPCError) as err:
            act(m, "install-remove", names("agent"))
        assert error_of(err.value) == ("in-use", "package-in-use")
        with pytest.raises(RPCError) as err:
            act(m, "install-add", "<packagepath>harddisk:/pkgs/agent-1.0.0-r1.noarch.rpm</packagepath>")
        assert error_of(err.value) == ("data-exists", "package-exists")

        act(m, "install-deactivate", names("mcast"))
        assert not (root / "opt/mcast").exists()
        assert sorted(package_rows(active_summary(m))) == ["agent"]
        act(m, "install-commit")
        act(m, "install-remove", "<inactive/>")
        assert not (installed.state_dir / "install" / "repo" / "mcast-2.0.0.0-r731.noarch.rpm").exists()
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", names("mcast"))
        assert error_of(err.value) == ("data-missing", "package-not-added")
        # back as it was, for the other tests
        act(m, "install-add", "<packagepath>harddisk:/pkgs/mcast-2.0.0.0-r731.noarch.rpm</packagepath>")
        act(m, "install-activate", names("mcast-2.0.0.0-r731"))
        wait_run_time(m, "mcast")


def test_a_file_owned_by_another_package_is_a_conflict(installed, packages):
    clash = build_rpm(packages["work"], "clash", {"/opt/agent/etc/agent.conf": b"mine\n"})
    shutil.copy(clash, installed.state_dir / "fs" / "harddisk:" / "pkgs")
    root = installed.state_dir / "install" / "root"
    with installed.connect() as m:
        act(m, "install-add", f"<packagepath>harddisk:/pkgs/{clash.name}</packagepath>")
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", names("clash"))
        assert error_of(err.value) == ("operation-failed", "file-conflict")
        assert (root / "opt/agent/etc/agent.conf").read_bytes() == AGENT_FILES["/opt/agent/etc/agent.conf"]
        act(m, "install-remove", names("clash"))


def test_fingerprint_frequency_config(installed):
    with installed.connect() as m:
        with pytest.raises(RPCError) as err:
            m.edit_config(target="candidate", config=f'<config xmlns="{NC}"><install xmlns="{CFG}"><fingerprints>'
                                                     "<frequency>13</frequency></fingerprints></install></config>")
        assert err.value.tag == "invalid-value"
        m.discard_changes()
        m.edit_config(target="candidate", config=f'<config xmlns="{NC}"><install xmlns="{CFG}"><fingerprints>'
                                                 "<frequency>6</frequency></fingerprints></install></config>")
        m.commit()
    assert "run-time fingerprints: every 6 hour(s)" in installed.log()


def test_bad_kgv_files_are_refused_and_keep_the_loaded_one(installed):
    disk = installed.state_dir / "fs" / "harddisk:"
    cases = {
        "notjson.json": b"{not json",
        "shape.json": b'["x"]',
        "short.json": json.dumps({"packages": [{"name": "a", "version": "1", "release": "r1",
                                                "fingerprint": "abc"}]}).encode(),
        "twice.json": json.dumps({"packages": [{"name": "a", "version": "1", "release": "r1",
                                                "fingerprint": "0" * 64}] * 2}).encode(),
    }
    with installed.connect() as m:
        before = etree.tostring(m.get(("subtree", f'<install-integrity xmlns="{TPI}"/>')).data_ele)
        for name, data in cases.items():
            (disk / name).write_bytes(data)
            with pytest.raises(RPCError) as err:
                rpc(m, f'<load-known-good-values xmlns="{TPI}"><path>harddisk:/{name}</path></load-known-good-values>')
            assert error_of(err.value) == ("invalid-value", "kgv-malformed"), name
        after = etree.tostring(m.get(("subtree", f'<install-integrity xmlns="{TPI}"/>')).data_ele)
    assert before == after


def test_activating_a_newer_version_replaces_the_active_one(installed, packages):
    newer = build_rpm(packages["work"], "agent", {**AGENT_FILES, "/opt/agent/etc/agent.conf": b"level=2\n"},
                      version="1.0.1", dirs=("/opt/agent", "/opt/agent/bin", "/opt/agent/etc"),
                      modes={"/opt/agent/bin/agent": 0o755}, symlinks={"/opt/agent/bin/ag": "agent"})
    shutil.copy(newer, installed.state_dir / "fs" / "harddisk:" / "pkgs")
    root = installed.state_dir / "install" / "root"
    with installed.connect() as m:
        act(m, "install-add", f"<packagepath>harddisk:/pkgs/{newer.name}</packagepath>")
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", names("agent"))  # two versions added: the name alone is ambiguous
        assert error_of(err.value) == ("invalid-value", "package-ambiguous")
        act(m, "install-activate", names("agent-1.0.1-r1"))
        row = wait_run_time(m, "agent")
        assert row["version"] == "1.0.1"
        assert row["rpm-fingerprint-run-time"] == row["rpm-fingerprint-install-time"]
        assert (root / "opt/agent/etc/agent.conf").read_bytes() == b"level=2\n"
        assert sorted(package_rows(active_summary(m))) == ["agent", "mcast"]


def test_a_link_one_package_placed_is_never_followed(installed, packages):
    """linker installs /opt/x as a link out of the package root; xowner owns the directory
    /opt/x with mode 0777. Activating xowner must not touch what the link points to."""
    outside = installed.state_dir.parent / "outside"
    outside.mkdir(mode=0o700)
    link = build_rpm(packages["work"], "linker", {}, symlinks={"/opt/x": str(outside)})
    owner = build_rpm(packages["work"], "xowner", {"/opt/x/f": b"f\n"}, dirs=("/opt/x",), modes={"/opt/x": 0o777})
    for p in (link, owner):
        shutil.copy(p, installed.state_dir / "fs" / "harddisk:" / "pkgs")
    state = installed.state_dir / "install" / "state.json"
    with installed.connect() as m:
        act(m, "install-add", "<packagepath>harddisk:/pkgs</packagepath><packagename>linker-1.0.0-r1.noarch.rpm"
                              "</packagename><packagename>xowner-1.0.0-r1.noarch.rpm</packagename>")
        act(m, "install-activate", names("linker"))
        wait_run_time(m, "linker")
        before = state.read_bytes()
        with pytest.raises(RPCError) as err:
            act(m, "install-activate", names("xowner"))
        assert error_of(err.value) == ("operation-failed", "path-escape")
        assert err.value.message == ("xowner-1.0.0-r1.noarch: /opt/x is a symbolic link; the package root's paths "
                                     "are never followed through links")
        assert os.stat(outside).st_mode & 0o777 == 0o700 and os.listdir(outside) == []
        assert state.read_bytes() == before
        assert sorted(package_rows(active_summary(m))) == ["agent", "linker", "mcast"]
        act(m, "install-deactivate", names("linker"))
        act(m, "install-remove", names("linker", "xowner"))
    assert not os.path.lexists(installed.state_dir / "install" / "root" / "opt" / "x")


@pytest.fixture
def small_disk(tmp_path, packages):
    """A server whose install directory is a 4 MiB tmpfs."""
    state = tmp_path / "state"
    make_state(state, packages)
    with small_tmpfs(state / "install") as disk:
        srv = ServerProcess(state).start()
        yield srv, disk
        srv.stop()


def snapshot(disk) -> dict[str, tuple[int, bytes]]:
    out = {}
    for here, _dirs, files in os.walk(disk):
        for name in files:
            p = os.path.join(here, name)
            if name != "filler":
                content = b"" if os.path.islink(p) else Path(p).read_bytes()
                out[os.path.relpath(p, disk)] = (os.lstat(p).st_mode, content)
        out[os.path.relpath(here, disk)] = (os.lstat(here).st_mode, b"")
    return out


def test_a_full_or_read_only_disk_changes_nothing(small_disk):
    srv, disk = small_disk
    agent = "<packagepath>harddisk:/pkgs/agent-1.0.0-r1.noarch.rpm</packagepath>"
    mcast = "<packagepath>harddisk:/pkgs/mcast-2.0.0.0-r731.noarch.rpm</packagepath>"
    other = "<packagepath>harddisk:/pkgs/other-1.0.0-r1.noarch.rpm</packagepath>"
    with srv.connect() as m:
        act(m, "install-add", agent)
        act(m, "install-activate", names("agent"))
        wait_run_time(m, "agent")
        kgv = srv.state_dir / "fs" / "harddisk:" / "kgv.json"
        kgv.write_text(json.dumps({"packages": [{"name": "agent", "version": "1.0.0", "release": "r1",
                                                 "fingerprint": "0" * 64}]}))
        load = f'<load-known-good-values xmlns="{TPI}"><path>harddisk:/kgv.json</path></load-known-good-values>'
        for fault, says in (("full", "No space left on device"), ("read-only", "Read-only file system")):
            if fault == "full":
                disk.fill()
            else:
                disk.unfill()
                disk.remount("ro")
            before, shown = snapshot(disk.path), etree.tostring(active_summary(m))
            for op, body, what in [
                    ("install-add", mcast if fault == "full" else other, "the package repository"),
                    ("install-deactivate", names("agent"), "the install state" if fault == "full"
                     else "the package root"),
                    ("install-commit", "", "the install state"),
                    ("install-verify", "", "the install state"),
                    (None, f'<verify-packages xmlns="{TPI}"/>', "the install state"),
                    (None, load, "the known-good values")]:
                with pytest.raises(RPCError) as err:
                    call(m, body) if op is None else act(m, op, body)
                assert error_of(err.value) == ("operation-failed", "storage-failed"), op
                assert err.value.message == f"cannot write {what}: {says}", op
                assert snapshot(disk.path) == before, op
                assert etree.tostring(active_summary(m)) == shown, op
            if fault == "full":  # staging the package's files fails too
                disk.unfill()
                act(m, "install-add", mcast)
                disk.fill()
                before = snapshot(disk.path)
                with pytest.raises(RPCError) as err:
                    act(m, "install-activate", names("mcast"))
                assert error_of(err.value) == ("operation-failed", "storage-failed")
                assert err.value.message == f"cannot write mcast-2.0.0.0-r731.noarch's files: {says}"
                assert snapshot(disk.path) == before
        disk.remount("rw")
        # with room again, the same operations succeed
        act(m, "install-activate", names("mcast"))
        act(m, "install-deactivate", names("agent"))
        act(m, "install-commit")
        call(m, load)
        assert sorted(package_rows(active_summary(m))) == ["mcast"]
        assert not (disk.path / "root" / "opt" / "agent").exists()
    assert "Traceback" not in srv.log()
