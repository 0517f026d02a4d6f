"""The device backend and the things a real device has: inventory state,
host name config through the backend hooks, the device filesystem over SFTP
and SCP, restart persistence and a crash in the middle of a commit."""
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import asyncssh
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, KEEP_ADMIN, NC, PASSWORD, ROOT, ServerProcess, rpc

DEV = "urn:trustplane:yang:trustplane-device"
D = {"d": DEV}


def get_inventory(m):
    flt = f'<device xmlns="{DEV}"><inventory/></device>'
    return etree.fromstring(m.get(filter=("subtree", flt)).data_xml.encode())


def test_inventory_matches_the_profile_and_openssl(server, nc):
    data = get_inventory(nc)
    nodes = {n.findtext("d:location", namespaces=D): n for n in data.iterfind(".//d:node", D)}
    assert sorted(nodes) == ["0/RP0/CPU0", "0/RP1/CPU0"]
    assert nodes["0/RP0/CPU0"].findtext("d:role", namespaces=D) == "active"
    assert nodes["0/RP1/CPU0"].findtext("d:role", namespaces=D) == "standby"
    profile = json.loads((server.state_dir / "device.json").read_text())
    lab_ca = server.state_dir.with_name(server.state_dir.name + "-lab") / "manufacturer-ca.pem"
    for entry in profile["nodes"]:
        node = nodes[entry["location"]]
        assert node.findtext("d:serial-number", namespaces=D) == entry["serial-number"]
        pem = node.findtext("d:idevid/d:certificate", namespaces=D)
        cert = server.state_dir / f"check-{entry['serial-number']}.pem"
        cert.write_text(pem)
        # the IDevID in the reply chains to the lab manufacturer CA, per openssl
        subprocess.run(["openssl", "verify", "-CAfile", str(lab_ca), str(cert)], check=True,
                       capture_output=True)
        subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(cert)],
                                 check=True, capture_output=True, text=True).stdout
        assert entry["serial-number"] in subject
        cert.unlink()


def test_state_provider_runs_only_when_selected(nc):
    data = etree.fromstring(nc.get(filter=("subtree", f'<settings xmlns="{CT}"/>')).data_xml.encode())
    assert data.find(f".//{{{DEV}}}inventory") is None


def test_hostname_config_reaches_the_profile(server, nc):
    nc.edit_config(target="running", config=f'<config xmlns="{NC}"><device xmlns="{DEV}"><system>'
                                            "<hostname>edge-1</hostname><domain-name>lab.example</domain-name>"
                                            "</system></device></config>")
    profile = json.loads((server.state_dir / "device.json").read_text())
    assert (profile["hostname"], profile["domain-name"]) == ("edge-1", "lab.example")


def test_failing_apply_hook_leaves_running_unchanged(fresh_server):
    srv = fresh_server
    with srv.connect() as m:
        m.edit_config(target="running", config=f'<config xmlns="{NC}"><device xmlns="{DEV}"><system>'
                                               "<hostname>before</hostname></system></device></config>")
        # make the profile unwritable: a directory where the rename must land
        profile = srv.state_dir / "device.json"
        saved = profile.read_bytes()
        profile.unlink()
        profile.mkdir()
        try:
            with pytest.raises(RPCError) as exc:
                m.edit_config(target="running", config=f'<config xmlns="{NC}"><device xmlns="{DEV}"><system>'
                                                       "<hostname>after</hostname></system></device></config>")
            assert exc.value.tag == "operation-failed"
            assert exc.value.app_tag == "storage-failed"
            assert exc.value.message.startswith("cannot write the device profile: ")
            data = etree.fromstring(m.get_config(source="running").data_xml.encode())
            assert data.findtext(f".//{{{DEV}}}hostname") == "before"
        finally:
            profile.rmdir()
            profile.write_bytes(saved)


def test_sftp_upload_then_checksum_rpc(server, nc, tmp_path):
    payload = b"owner voucher bytes\n" * 1000

    async def upload():
        async with asyncssh.connect(server.host, server.port, username="admin", password=PASSWORD,
                                    known_hosts=None, client_keys=None) as conn:
            async with conn.start_sftp_client() as sftp:
                assert sorted(await sftp.listdir("/")) == [".", "..", "disk0:", "harddisk:"]
                await sftp.makedirs("/disk0:/ovs", exist_ok=True)
                async with sftp.open("/disk0:/ovs/voucher.vcj", "wb") as f:
                    await f.write(payload)
                # nothing outside the devices, and no way out of them
                for bad in ("/elsewhere.bin", "/disk0:/../../device.json", "/../users.json"):
                    with pytest.raises(asyncssh.SFTPError):
                        async with sftp.open(bad, "wb") as f:
                            await f.write(b"x")
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.symlink("/disk0:/ovs/voucher.vcj", "/disk0:/link")
                with pytest.raises(asyncssh.SFTPError):
                    await sftp.mkdir("/newdevice:")
    asyncio.run(upload())
    reply = rpc(nc, f'<file-checksum xmlns="{DEV}"><path>/disk0:/ovs/voucher.vcj</path></file-checksum>')
    out = etree.fromstring(reply.xml.encode())
    assert out.findtext(".//d:checksum", namespaces=D) == hashlib.sha256(payload).hexdigest()
    assert out.findtext(".//d:size", namespaces=D) == str(len(payload))
    assert out.findtext(".//d:path", namespaces=D) == "disk0:/ovs/voucher.vcj"


def test_scp_upload_with_the_openssh_client(server, nc, tmp_path):
    if shutil.which("scp") is None:
        pytest.skip("no scp client")
    src = tmp_path / "image.bin"
    src.write_bytes(b"\x00\x01" * 5000)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    # authorize the key for admin through the user database the server reads
    users = json.loads((server.state_dir / "users.json").read_text())
    users["users"]["admin"].setdefault("authorized-keys", []).append((tmp_path / "id_ed25519.pub").read_text().strip())
    (server.state_dir / "users.json").write_text(json.dumps(users))
    subprocess.run(["scp", "-O", "-q", "-P", str(server.port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                    str(src), "admin@127.0.0.1:harddisk:/image.bin"], check=True, timeout=30)
    reply = rpc(nc, f'<file-checksum xmlns="{DEV}"><path>harddisk:/image.bin</path>'
                    "<algorithm>sha512</algorithm></file-checksum>")
    out = etree.fromstring(reply.xml.encode())
    assert out.findtext(".//d:checksum", namespaces=D) == hashlib.sha512(src.read_bytes()).hexdigest()


@pytest.mark.parametrize("path,tag,app_tag", [
    ("disk0:/missing.bin", "data-missing", "file-not-found"),
    ("disk0:/../../device.json", "invalid-value", "path-escape"),
    ("flash:/x", "invalid-value", "bad-device-path"),
    ("disk0:/", "invalid-value", "not-a-file"),
])
def test_checksum_rpc_path_errors(nc, path, tag, app_tag):
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<file-checksum xmlns="{DEV}"><path>{path}</path></file-checksum>')
    assert (exc.value.tag, exc.value.app_tag) == (tag, app_tag)
    assert exc.value.type == "application"


def test_checksum_rpc_input_validated_by_the_schema(nc):
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<file-checksum xmlns="{DEV}"><path>disk0:/x</path><algorithm>md5</algorithm></file-checksum>')
    assert exc.value.tag == "invalid-value"
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<file-checksum xmlns="{DEV}"/>')
    assert exc.value.tag == "data-missing"


def test_restart_keeps_running_and_startup(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        with srv.connect() as m:
            m.edit_config(target="running", config=f'<config xmlns="{NC}"><settings xmlns="{CT}">'
                                                   "<name>kept</name></settings></config>")
            m.copy_config(source="running", target="startup")
            m.edit_config(target="running", config=f'<config xmlns="{NC}"><settings xmlns="{CT}">'
                                                   "<mtu>2000</mtu></settings></config>")
        assert srv.stop() == 0
        assert "listening" in srv.start().listen_line
        with srv.connect() as m:
            run = etree.fromstring(m.get_config(source="running").data_xml.encode())
            assert run.findtext(f".//{{{CT}}}name") == "kept"
            assert run.findtext(f".//{{{CT}}}mtu") == "2000"
            start = etree.fromstring(m.get_config(source="startup").data_xml.encode())
            assert start.findtext(f".//{{{CT}}}mtu") is None
    finally:
        srv.stop()


def test_kill_during_commit_leaves_old_or_new(tmp_path):
    """SIGKILL at different moments of a large commit: on restart running holds
    all of the old configuration or all of the new one."""
    srv = ServerProcess(tmp_path / "state").start()
    entries = "".join(f"<entry><name>e{i}</name><value>{i}</value></entry>" for i in range(20000))
    big = f'<config xmlns="{NC}"><bulk xmlns="{CT}">{entries}</bulk></config>'
    try:
        for delay in (0.05, 0.2, 0.4, 0.8, 1.5):
            with srv.connect() as m:
                rpc(m, f'<copy-config xmlns="{NC}"><target><running/></target><source><config>'
                       f'<settings xmlns="{CT}"><name>old</name></settings>{KEEP_ADMIN}</config></source>'
                       "</copy-config>")
            m = srv.connect()
            m.async_mode = True
            m.edit_config(target="running", config=big)
            time.sleep(delay)
            srv.stop(signal.SIGKILL)
            srv.start()
            with srv.connect() as m:
                data = etree.fromstring(m.get_config(source="running").data_xml.encode())
            count = len(data.findall(f".//{{{CT}}}entry"))
            assert count in (0, 20000), (delay, count)
            assert data.findtext(f".//{{{CT}}}name") == "old"
    finally:
        srv.stop()


def test_first_start_prints_the_generated_password_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRUSTPLANE_ADMIN_PASSWORD"}
    state = tmp_path / "state"
    cmd = [sys.executable, "-m", "trustplane.cli", "serve", "--state-dir", str(state), "--port", "0"]
    password = None
    for first in (True, False):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline()
            assert line.startswith("trustplane: listening on 127.0.0.1:"), line
            if not first:  # the printed password logs in
                srv = ServerProcess(state)
                srv.port = int(line.rsplit(":", 1)[1])
                with srv.connect(password=password) as m:
                    assert m.session_id
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0
        said = re.findall(r"created user admin with password (\S+)", err)
        assert len(said) == (1 if first else 0)
        password = password or said[0]
    assert password not in (state / "users.json").read_text()


@pytest.mark.parametrize("rate", ["0", "0.5", "3601", "fast", "nan"])
def test_a_clock_rate_out_of_range_is_a_usage_error(tmp_path, rate):
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "serve", "--state-dir", str(tmp_path / "state"),
                          "--port", "0", "--clock-rate", rate], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"--clock-rate: expected a rate from 1 to 3600, got '{rate}'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists()
