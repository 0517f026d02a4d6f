"""A full or read-only state disk (a real tmpfs): every file a change needs is written before
the change goes live, so a refused write leaves nothing live, nothing on disk and nothing for
shutdown to write. The reply names what could not be written (storage-failed), the log has no
traceback, and once the disk is back the same request succeeds."""
from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError
from ncclient.transport.errors import AuthenticationError

from conftest import CT, NC, ROOT, ServerProcess, rpc
from diskfull import Disk, need_root
from nc_server.confirmed_commit import ConfirmedCommit
from nc_server.users import UserDB
from yangcore import datastore
from yangcore.datastore import StorageError
from test_devfs import self_signed_ca_pem

HOWS = ("full", "read-only")
SYS = "urn:ietf:params:xml:ns:yang:ietf-system"
DEV = "urn:trustplane:yang:trustplane-device"
ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
NEW = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-new-oper"
PKI = "urn:trustplane:yang:trustplane-pki"


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A server whose whole state directory is one small tmpfs. The notification log has a
    disk of its own: what it does on a full disk is not what these tests look at."""
    need_root()
    state = tmp_path_factory.mktemp("diskfail") / "state"
    d = Disk(state, "24m").mount()
    notifications = Disk(state / "notifications", "4m").mount()
    d.server = ServerProcess(state).start()
    yield d
    d.server.stop()
    notifications.unmount()
    d.unmount()


@pytest.fixture
def m(disk):
    with disk.server.connect() as session:
        yield session
    assert "Traceback" not in disk.server.log()


def cfg(body: str) -> str:
    return f'<config xmlns="{NC}">{body}</config>'


def name_cfg(name: str) -> str:
    return cfg(f'<settings xmlns="{CT}"><name>{name}</name></settings>')


def names(m, source="running") -> list[str]:
    reply = m.get_config(source=source, filter=("xpath", ({"ct": CT}, "/ct:settings/ct:name")))
    return [e.text for e in etree.fromstring(reply.xml.encode()).iter(f"{{{CT}}}name")]


def refused(what: str, code: int, call, *args, **kw) -> None:
    """call fails with storage-failed naming what could not be written, and why."""
    with pytest.raises(RPCError) as info:
        call(*args, **kw)
    err = info.value
    assert (err.tag, err.app_tag) == ("operation-failed", "storage-failed"), err.message
    assert err.message == f"cannot write {what}: {os.strerror(code)}"


def act(m, op: str, body: str = "") -> etree._Element:
    return etree.fromstring(rpc(m, f'<{op} xmlns="{ACT}">{body}</{op}>').xml.encode())


# -- datastores ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", HOWS)
def test_running_edit_refused_then_done(disk, m, how):
    m.edit_config(target="running", config=name_cfg("before"))
    with disk.broken(how) as code:
        refused("the running configuration", code, m.edit_config, target="running", config=name_cfg("new"))
        assert names(m) == ["before"]
        assert names(m, "candidate") == ["before"]
    assert "new" not in (disk.path / "datastore" / "running.xml").read_text()
    m.edit_config(target="running", config=name_cfg("new"))
    assert names(m) == ["new"]


@pytest.mark.parametrize("how", HOWS)
def test_startup_copy_and_delete_refused_then_done(disk, m, how):
    m.edit_config(target="running", config=name_cfg("saved"))
    m.copy_config(source="running", target="startup")
    m.edit_config(target="running", config=name_cfg("unsaved"))
    startup = (disk.path / "datastore" / "startup.xml").read_bytes()
    with disk.broken(how) as code:
        refused("the startup configuration", code, m.copy_config, source="running", target="startup")
        if how == "read-only":  # an empty file fits on a full disk
            refused("the startup configuration", code, m.delete_config, target="startup")
        assert names(m, "startup") == ["saved"]
    assert (disk.path / "datastore" / "startup.xml").read_bytes() == startup
    m.copy_config(source="running", target="startup")
    assert names(m, "startup") == ["unsaved"]


@pytest.mark.parametrize("how", HOWS)
def test_confirmed_commit_refused_then_done(disk, m, how):
    m.edit_config(target="running", config=name_cfg("base"))
    m.edit_config(target="candidate", config=name_cfg("trial"))
    state = disk.path / "datastore" / "confirmed-commit.json"
    with disk.broken(how) as code:
        # starting one: its state file comes first
        refused("the confirmed-commit state", code, m.commit, confirmed=True, timeout="60")
        assert names(m) == ["base"]
        with pytest.raises(RPCError, match="no confirmed commit is pending"):
            m.cancel_commit()
    assert not state.exists()
    m.commit(confirmed=True, timeout="60")
    assert names(m) == ["trial"] and state.exists()
    with disk.broken(how) as code:
        # confirming and cancelling: refused, the commit stays pending, on disk too
        refused("the running configuration", code, m.commit)
        refused("the running configuration", code, m.cancel_commit)
        assert names(m) == ["trial"]
    assert state.exists()
    m.commit()
    assert names(m) == ["trial"] and not state.exists()


# -- users and the device profile --------------------------------------------------------

def user_cfg(name: str, password: str) -> str:
    return cfg(f'<system xmlns="{SYS}"><authentication><user><name>{name}</name>'
               f"<password>$0${password}</password></user></authentication></system>")


def user_names(m) -> list[str]:
    data = m.get_config(source="running", filter=("subtree", f'<system xmlns="{SYS}"/>')).data_ele
    return sorted(e.text for e in data.iter(f"{{{SYS}}}name"))


@pytest.mark.parametrize("how", HOWS)
def test_user_edit_refused_then_done(disk, m, how):
    user = f"carol-{how}"
    users_file = (disk.path / "users.json").read_bytes()
    with disk.broken(how) as code:
        refused("the user list", code, m.edit_config, target="running", config=user_cfg(user, "carol-pw"))
        assert user not in user_names(m)
        with pytest.raises(AuthenticationError):  # not live for logins either
            disk.server.connect(username=user, password="carol-pw")
    assert (disk.path / "users.json").read_bytes() == users_file
    m.edit_config(target="running", config=user_cfg(user, "carol-pw"))
    assert user in user_names(m)
    with disk.server.connect(username=user, password="carol-pw") as other:
        assert other.session_id != m.session_id


def hostname(m) -> str:
    data = m.get_config(source="running", filter=("subtree", f'<device xmlns="{DEV}"/>')).data_ele
    return data.findtext(f".//{{{DEV}}}hostname")


@pytest.mark.parametrize("how", HOWS)
def test_hostname_refused_then_done(disk, m, how):
    def host_cfg(name):
        return cfg(f'<device xmlns="{DEV}"><system><hostname>{name}</hostname></system></device>')
    m.edit_config(target="running", config=host_cfg("old-name"))
    with disk.broken(how) as code:
        refused("the device profile", code, m.edit_config, target="running", config=host_cfg("new-name"))
        assert hostname(m) == "old-name"
    assert json.loads((disk.path / "device.json").read_text())["hostname"] == "old-name"
    m.edit_config(target="running", config=host_cfg("new-name"))
    assert hostname(m) == "new-name"
    assert json.loads((disk.path / "device.json").read_text())["hostname"] == "new-name"


def test_refused_change_is_not_written_at_shutdown(disk):
    with disk.server.connect() as m:
        m.edit_config(target="running", config=name_cfg("kept"))
        with disk.full() as code:
            refused("the running configuration", code, m.edit_config, target="running", config=name_cfg("ghost"))
    assert disk.server.stop() == 0
    assert "ghost" not in (disk.path / "datastore" / "running.xml").read_text()
    disk.server.start()
    with disk.server.connect() as m:
        assert names(m) == ["kept"]
    assert "Traceback" not in disk.server.log()


def test_user_cli_refused_in_one_line(disk):
    users_file = (disk.path / "users.json").read_bytes()
    for how in HOWS:
        with disk.broken(how) as code:
            out = subprocess.run([sys.executable, "-m", "trustplane.cli", "user", "add", "dave", "--password-stdin",
                                  "--state-dir", str(disk.path)], input=b"dave-pw\n", capture_output=True, cwd=ROOT)
        assert out.returncode == 1
        assert out.stderr.decode() == f"trustplane: cannot write {disk.path / 'users.json'}: {os.strerror(code)}\n"
        assert (disk.path / "users.json").read_bytes() == users_file


# -- PKI ----------------------------------------------------------------------------------

def key_labels(m) -> list[str]:
    data = m.get(("subtree", f'<crypto-cepki xmlns="{NEW}"/>')).data_ele
    return sorted(e.text for e in data.iter() if etree.QName(e).localname == "key-name")


@pytest.mark.parametrize("how", HOWS)
def test_key_generation_refused_then_done(disk, m, how):
    keys_dir = disk.path / "pki" / "keys"
    before, files = key_labels(m), sorted(os.listdir(keys_dir))
    label = f"ed-{how}"
    with disk.broken(how) as code:
        refused("the key store", code, act, m, "key-generate-ed25519", f"<key-label>{label}</key-label>")
        assert key_labels(m) == before
    assert sorted(os.listdir(keys_dir)) == files  # no part of a key left behind
    act(m, "key-generate-ed25519", f"<key-label>{label}</key-label>")
    assert label in key_labels(m)


def downloaded(m) -> str:
    return m.get(("subtree", f'<pki xmlns="{PKI}"/>')).data_ele.findtext(f".//{{{PKI}}}downloaded")


@pytest.mark.parametrize("how", HOWS)
def test_trustpool_import_refused_then_done(disk, m, how):
    (disk.path / "fs" / "disk0:" / "pool.pem").write_bytes(self_signed_ca_pem())
    act(m, "ca-trustpool-import-url-clean")
    state = (disk.path / "pki" / "state.json").read_bytes()
    with disk.broken(how) as code:
        refused("the PKI state", code, act, m, "ca-trustpool-import-url", "<url>disk0:/pool.pem</url>")
        assert downloaded(m) == "0"
    assert (disk.path / "pki" / "state.json").read_bytes() == state
    act(m, "ca-trustpool-import-url", "<url>disk0:/pool.pem</url>")
    assert downloaded(m) == "1"


CFG = "http://cisco.com/ns/yang/Cisco-IOS-XR-um-crypto-cfg"
CEPKI = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-cepki-oper"


def enrollment_state(m, name: str) -> str:
    data = m.get(("subtree", f'<crypto-certificate-authority xmlns="{CEPKI}"/>')).data_ele
    tp = next(t for t in data.iter(f"{{{CEPKI}}}trustpoint") if t.findtext(f"{{{CEPKI}}}name") == name)
    return tp.findtext(f"{{{PKI}}}enrollment-state")


@pytest.mark.parametrize("how", HOWS)
def test_ca_authenticate_and_request_file_refused_then_done(disk, m, how):
    tp, csr = f"tp-{how}", disk.path / "fs" / "disk0:" / f"tp-{how}.csr"
    (disk.path / "fs" / "disk0:" / "ca.pem").write_bytes(self_signed_ca_pem())
    act(m, "key-generate-rsa", f"<key-label>{tp}</key-label><key-modulus>2048</key-modulus>")
    m.edit_config(target="running", config=cfg(
        f'<crypto xmlns="{CFG}"><ca><trustpoint><trustpoints><trustpoint><trustpoint-name>{tp}</trustpoint-name>'
        f"<enrollment><terminal/></enrollment><rsakeypair>{tp}</rsakeypair>"
        "</trustpoint></trustpoints></trustpoint></ca></crypto>"))
    authenticate = f"<server-name>{tp}</server-name><file-path>disk0:/ca.pem</file-path>"
    enroll = f"<server-name>{tp}</server-name><file-path>disk0:/{csr.name}</file-path>"
    with disk.broken(how) as code:
        refused("the PKI state", code, act, m, "ca-authenticate", authenticate)
        assert enrollment_state(m, tp) == "not-authenticated"
    act(m, "ca-authenticate", authenticate)
    with disk.broken(how) as code:
        refused(f"'disk0:/{csr.name}'", code, act, m, "ca-enroll", enroll)
        assert enrollment_state(m, tp) == "authenticated"
    assert not csr.exists()
    assert act(m, "ca-enroll", enroll).findtext(f"{{{PKI}}}status") == "request-written"
    assert csr.read_text().startswith("-----BEGIN CERTIFICATE REQUEST-----")


# -- the write primitives -----------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    need_root()
    d = Disk(tmp_path / "small", "1m").mount()
    yield d
    d.unmount()


@pytest.mark.parametrize("how", HOWS)
def test_atomic_write_keeps_the_old_content_and_leaves_no_temp_file(small_disk, how):
    path = small_disk.path / "f.json"
    datastore.atomic_write(path, b"old")
    with small_disk.broken(how) as code:
        with pytest.raises(OSError) as info:
            datastore.atomic_write(path, b"new" * 1000)
        assert info.value.errno == code
        assert sorted(p.name for p in small_disk.path.iterdir() if p.name != ".filler") == ["f.json"]
    assert path.read_bytes() == b"old"


def test_writes_are_all_or_nothing(tmp_path):
    first, blocked = tmp_path / "a.json", tmp_path / "not-a-dir"  # the second's directory cannot be made
    first.write_bytes(b"old")
    blocked.write_bytes(b"")
    writes = datastore.Writes()
    writes.write(first, b"new", "the first file")
    with pytest.raises(StorageError) as info:
        writes.write(blocked / "b.json", b"new", "the second file")
    assert info.value.message == f"cannot write the second file: {os.strerror(errno.EEXIST)}"
    writes.discard()
    assert first.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "not-a-dir"]


def test_a_failed_directory_sync_after_the_rename_is_logged_not_raised(tmp_path, monkeypatch, caplog):
    """The file holds the new content by then: raising would have memory disagree with the disk."""
    path = tmp_path / "f.json"
    real_fsync = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with caplog.at_level(logging.WARNING, logger="yangcore.datastore"):
        datastore.atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert f"cannot sync the directory {tmp_path}: {os.strerror(errno.EIO)}" in caplog.text


def test_userdb_failed_save_leaves_nothing_live(tmp_path, monkeypatch):
    import nc_server.users as users
    db = UserDB(tmp_path / "users.json")
    db.add_user("admin", password="pw")

    def full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(users, "atomic_write", full)
    with pytest.raises(OSError):
        db.add_user("mallory", password="pw")
    with pytest.raises(OSError):
        db.remove_user("admin")
    assert db.users() == ["admin"]
    assert not asyncio.run(db.check_password("mallory", "pw"))


def test_confirmed_rollback_refused_by_the_disk_is_tried_again(tmp_path, monkeypatch):
    import nc_server.confirmed_commit as cc
    monkeypatch.setattr(cc, "RETRY_DELAY", 0.01)
    path = tmp_path / "confirmed-commit.json"
    path.write_text(json.dumps({"backup": "<x/>", "deadline": 0, "persist": None}))
    attempts = []

    async def main():
        done = asyncio.Event()

        def rollback(backup, reason, writes):
            attempts.append(reason)
            if len(attempts) < 3:
                writes.discard()
                raise StorageError("the running configuration", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
            writes.commit()
            done.set()
        confirmed = ConfirmedCommit(path, rollback)
        confirmed.restore()
        assert confirmed.pending is not None and path.exists()  # still pending after a refusal
        await asyncio.wait_for(done.wait(), 10)
        return confirmed
    confirmed = asyncio.run(main())
    assert attempts == ["restart"] * 3
    assert confirmed.pending is None and not path.exists()


def test_server_starts_and_serves_on_a_read_only_disk(disk):
    assert disk.server.stop() == 0
    with disk.read_only() as code:
        disk.server.start()
        with disk.server.connect() as m:
            before = names(m)
            refused("the running configuration", code, m.edit_config, target="running", config=name_cfg("ro"))
            assert names(m) == before
        assert disk.server.stop() == 0
    disk.server.start()
    assert "Traceback" not in disk.server.log()


def test_a_start_that_cannot_record_says_so_in_one_line(disk):
    """First start after a startup was saved boots from it and records running: not on a read-only disk."""
    with disk.server.connect() as m:
        m.copy_config(source="running", target="startup")
    assert disk.server.stop() == 0
    running = disk.path / "datastore" / "running.xml"
    saved = running.read_bytes()
    running.unlink()
    try:
        with disk.read_only() as code:
            # -W ignore: the host's CA bundle may hold certificates cryptography warns about
            out = subprocess.run([sys.executable, "-W", "ignore", "-m", "trustplane.cli", "serve", "--state-dir",
                                  str(disk.path), "--port", "0", "--yang-dir", str(ROOT / "tests" / "yang-config"),
                                  "--log-level", "ERROR"], capture_output=True, cwd=ROOT, timeout=60)
        assert out.returncode == 1
        assert out.stderr.decode() == f"trustplane: cannot write the running configuration: {os.strerror(code)}\n"
    finally:
        running.write_bytes(saved)
        disk.server.start()


# -- PKI writes in the background: a refusal is logged, the loop lives on -----------------

@pytest.fixture
def pki(tmp_path, monkeypatch):
    """A PKI backend whose state file refuses every write."""
    from backends.pki.backend import PkiBackend
    from backends.engine.errors import EngineError
    from yangcore.backend import Services

    def refuse(state):
        raise EngineError("storage-failed", f"cannot write the PKI state: {os.strerror(errno.ENOSPC)}")

    async def make():
        backend = PkiBackend(Services(state_dir=tmp_path, devfs=None, clock=lambda: datetime.now(timezone.utc)))
        backend.close()  # its timers are not under test
        monkeypatch.setattr(backend.store, "commit", refuse)
        return backend
    return make


def test_trustpool_auto_update_survives_a_refused_write(pki, caplog):
    slept = []

    async def main():
        backend = await pki()

        async def sleep(timer, seconds):
            slept.append((timer, seconds))
        backend._sleep = sleep
        with caplog.at_level(logging.ERROR, logger="backends.pki.backend"):
            await backend._auto_update(datetime.now(timezone.utc))  # no url configured: records the attempt
    asyncio.run(main())
    assert f"trustpool: cannot write the PKI state: {os.strerror(errno.ENOSPC)}" in caplog.text
    assert slept == [("trustpool", 3600.0)]  # not at once again: the attempt is not recorded


def test_abandoned_enrollment_survives_a_refused_write(pki, caplog):
    async def main():
        backend = await pki()
        with caplog.at_level(logging.ERROR, logger="backends.pki.backend"):
            await backend._abandon("tp")
    asyncio.run(main())
    assert (f"trustpoint tp: cannot write the PKI state: {os.strerror(errno.ENOSPC)}; the pending enrollment "
            "stays recorded") in caplog.text


def test_type6_master_key_refused_then_made(disk, m):
    """The master key is made when the first secret is configured; a disk that refuses it
    leaves no key, or part of one, behind."""
    tp = ('<crypto xmlns="http://cisco.com/ns/yang/Cisco-IOS-XR-um-crypto-cfg"><ca><trustpoint><trustpoints>'
          "<trustpoint><trustpoint-name>t6</trustpoint-name><challenge-password><password6>pw</password6>"
          "</challenge-password></trustpoint></trustpoints></trustpoint></ca></crypto>")
    for how in HOWS:
        with disk.broken(how) as code:
            refused("the type 6 master key", code, m.edit_config, target="running", config=cfg(tp))
        assert not (disk.path / "type6.key").exists()
    m.edit_config(target="running", config=cfg(tp))
    assert len((disk.path / "type6.key").read_bytes()) == 32
