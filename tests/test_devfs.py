"""The device filesystem: the resolver (accepted forms, every way out refused), its
access control and quota, and SFTP/SCP over SSH as users with different rights."""
import asyncio
import contextlib
import os
import shutil
import stat
import subprocess
import sys

from datetime import datetime, timedelta, timezone

import asyncssh
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import NC, PASSWORD, ROOT, ServerProcess, rpc
from yangcore.devfs import DeviceFS, DevFSError


@pytest.fixture
def fs(tmp_path):
    d = DeviceFS(tmp_path / "fs")
    (tmp_path / "fs" / "disk0:" / "ovs").mkdir()
    (tmp_path / "fs" / "disk0:" / "ovs" / "v.vcj").write_bytes(b"voucher")
    (tmp_path / "secret").write_text("outside")
    return d


@pytest.mark.parametrize("path", ["/disk0:/ovs/v.vcj", "disk0:/ovs/v.vcj", "disk0:ovs/v.vcj",
                                  "disk0:/ovs//./v.vcj"])
def test_accepted_forms(fs, path):
    assert fs.read_bytes(path) == b"voucher"
    assert fs.device_path(fs.resolve(path)) == "disk0:/ovs/v.vcj"


@pytest.mark.parametrize("path,code", [
    ("disk0:/../secret", "path-escape"),
    ("/disk0:/ovs/../../harddisk:/x", "path-escape"),
    ("flash:/x", "bad-device-path"),
    ("/etc/passwd", "bad-device-path"),
    ("disk0", "bad-device-path"),
    ("disk0:/a\0b", "bad-device-path"),
    ("disk0:\\ovs\\v.vcj", "bad-device-path"),
    ("disk0:/nope", "file-not-found"),
    ("disk0:/ovs", "not-a-file"),
])
def test_refused(fs, path, code):
    with pytest.raises(DevFSError) as exc:
        fs.read_bytes(path)
    assert exc.value.code == code
    assert path.replace("\0", "\\x00")[:5] in repr(exc.value.message) or code == "bad-device-path"


def test_symlink_out_of_the_device_is_refused(fs, tmp_path):
    os.symlink(tmp_path / "secret", tmp_path / "fs" / "disk0:" / "link")
    os.symlink(tmp_path, tmp_path / "fs" / "disk0:" / "dirlink")
    for path in ("disk0:/link", "disk0:/dirlink/secret"):
        with pytest.raises(DevFSError) as exc:
            fs.read_bytes(path)
        assert exc.value.code == "path-escape"


def test_symlink_inside_the_device_is_followed(fs, tmp_path):
    os.symlink("ovs/v.vcj", tmp_path / "fs" / "disk0:" / "inner")
    assert fs.read_bytes("disk0:/inner") == b"voucher"


def test_size_limit_and_write(fs):
    fs.write_bytes("harddisk:/big.bin", b"x" * 100)
    assert fs.read_bytes("harddisk:/big.bin", max_size=100) == b"x" * 100
    with pytest.raises(DevFSError) as exc:
        fs.read_bytes("harddisk:/big.bin", max_size=99)
    assert exc.value.code == "file-too-large"
    with pytest.raises(DevFSError):
        fs.write_bytes("disk0:/ovs", b"")


def test_users_are_refused_until_access_control_is_set(fs):
    with pytest.raises(DevFSError) as exc:
        fs.read_bytes("disk0:/ovs/v.vcj", user="guest")
    assert (exc.value.code, exc.value.tag) == ("file-access-denied", "access-denied")
    assert exc.value.message == "read access to the files of disk0: is denied"
    assert fs.read_bytes("disk0:/ovs/v.vcj") == b"voucher"  # the server itself
    fs.authorize = lambda user, root, op: (root, op) == ("disk0:", "read")
    assert fs.read_bytes("disk0:/ovs/v.vcj", user="guest") == b"voucher"
    # refused before the path is looked at: a missing file says the same
    for path, op in (("harddisk:/nope", "read"), ("harddisk:/../../x", "read"), ("disk0:/new", "create")):
        with pytest.raises(DevFSError) as exc:
            fs.write_bytes(path, b"x", user="guest") if op == "create" else fs.read_bytes(path, user="guest")
        assert exc.value.code == "file-access-denied"
    assert not (fs.root / "disk0:" / "new").exists()


def test_usage_is_measured_at_start_and_kept_by_writes(fs, tmp_path):
    fs = DeviceFS(tmp_path / "fs")  # the fixture's files were made behind its back
    assert (fs.used_bytes, fs.used_files) == (len(b"voucher"), 2)  # ovs/ and ovs/v.vcj
    fs.write_bytes("disk0:/ovs/v.vcj", b"longer voucher")
    fs.write_bytes("harddisk:/new", b"12345")
    assert (fs.used_bytes, fs.used_files) == (len(b"longer voucher") + 5, 3)
    assert DeviceFS(tmp_path / "fs").used_bytes == fs.used_bytes


def test_quota_refuses_a_write_and_keeps_the_file(tmp_path):
    fs = DeviceFS(tmp_path / "fs", max_bytes=10, max_files=2)
    fs.write_bytes("disk0:/a", b"12345678")
    with pytest.raises(DevFSError) as exc:
        fs.write_bytes("disk0:/a", b"12345678901")
    assert (exc.value.code, exc.value.tag) == ("quota-exceeded", "resource-denied")
    assert "quota of 10 bytes would be exceeded (8 bytes in use)" in exc.value.message
    assert fs.read_bytes("disk0:/a") == b"12345678"
    fs.write_bytes("disk0:/b", b"")
    with pytest.raises(DevFSError) as exc:
        fs.write_bytes("disk0:/c", b"")
    assert "limit of 2 files and directories would be exceeded" in exc.value.message
    assert not (tmp_path / "fs" / "disk0:" / "c").exists()
    assert (fs.used_bytes, fs.used_files) == (8, 2)


def test_update_needs_update_access(fs):
    fs.authorize = lambda user, root, op: op == "create"
    fs.write_bytes("disk0:/fresh", b"new", user="dropper")
    with pytest.raises(DevFSError) as exc:
        fs.write_bytes("disk0:/ovs/v.vcj", b"replaced", user="dropper")
    assert exc.value.message == "update access to the files of disk0: is denied"
    assert fs.read_bytes("disk0:/ovs/v.vcj") == b"voucher"


# -- over SSH -------------------------------------------------------------------------

ACM = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
SYS = "urn:ietf:params:xml:ns:yang:ietf-system"
DEV = "urn:trustplane:yang:trustplane-device"
QUOTA = 64 * 1024
MAX_FILES = 40
VOUCHER = b"admin-loaded voucher\n" * 20
USERS = ("nobody", "reader", "writer", "dropper", "checker")


def _rule(name: str, ops: str, root: str | None = None) -> str:
    path = "/d:device/d:filesystem" + (f"/d:root[d:name='{root}']" if root else "")
    return (f"<rule><name>{name}</name><module-name>trustplane-device</module-name>"
            f'<path xmlns:d="{DEV}">{path}</path><access-operations>{ops}</access-operations>'
            "<action>permit</action></rule>")


RUN_ANY = ("<rule><name>run</name><module-name>*</module-name><rpc-name>*</rpc-name>"
           "<access-operations>exec</access-operations><action>permit</action></rule>")
# nobody is in no group; checker may run every operation but use no file
POLICY = (f'<nacm xmlns="{ACM}"><groups>'
          + "".join(f"<group><name>{u}s</name><user-name>{u}</user-name></group>" for u in USERS[1:])
          + "</groups>"
          + f"<rule-list><name>readers</name><group>readers</group>{_rule('files', 'read')}{RUN_ANY}</rule-list>"
          + "<rule-list><name>writers</name><group>writers</group>"
          + _rule("disk0", "*", "disk0:") + _rule("harddisk", "read", "harddisk:") + "</rule-list>"
          + "<rule-list><name>droppers</name><group>droppers</group>"
          + _rule("drop", "create", "disk0:") + "</rule-list>"
          + f"<rule-list><name>checkers</name><group>checkers</group>{RUN_ANY}</rule-list></nacm>")


@pytest.fixture(scope="module")
def fs_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("devfs")
    srv = ServerProcess(work / "state", "--fs-quota", str(QUOTA), "--fs-max-files", str(MAX_FILES)).start()
    key = asyncssh.generate_private_key("ssh-ed25519")
    srv.key_path = work / "id_ed25519"
    srv.key_path.write_bytes(key.export_private_key())
    srv.key_path.chmod(0o600)
    alg, data = key.export_public_key().decode().split()[:2]
    users = "".join(f"<user><name>{u}</name>{'' if u == 'admin' else f'<password>$0${u}-pw</password>'}"
                    f"<authorized-key><name>k</name><algorithm>{alg}</algorithm><key-data>{data}</key-data>"
                    "</authorized-key></user>" for u in ("admin", *USERS))
    with srv.connect() as m:
        m.edit_config(target="running", config=f'<config xmlns="{NC}"><system xmlns="{SYS}"><authentication>'
                                               f"{users}</authentication></system>{POLICY}</config>")

    async def seed(sftp):
        await sftp.mkdir("/disk0:/ovs")
        async with sftp.open("/disk0:/ovs/voucher.vcj", "wb") as f:
            await f.write(VOUCHER)
    run_sftp(srv, "admin", seed)
    yield srv
    srv.stop()


def run_sftp(srv, user: str, body):
    """body(sftp client) over a fresh SSH connection as user."""
    async def go():
        password = PASSWORD if user == "admin" else f"{user}-pw"
        async with asyncssh.connect(srv.host, srv.port, username=user, password=password, known_hosts=None,
                                    client_keys=None) as conn:
            async with conn.start_sftp_client() as sftp:
                return await body(sftp)
    return asyncio.run(go())


@contextlib.asynccontextmanager
async def refused(code: int, reason: str):
    """The SFTP request in the block fails with this status code and reason."""
    with pytest.raises(asyncssh.SFTPError) as exc:
        yield
    assert (exc.value.code, exc.value.reason) == (code, reason)


DENIED = asyncssh.FX_PERMISSION_DENIED


def remove(srv, path: str) -> None:
    """Remove a file as admin, so that the server counts it."""
    async def body(sftp):
        await sftp.remove(path)
    run_sftp(srv, "admin", body)


def disk(srv, path: str):
    return srv.state_dir / "fs" / path


def test_user_in_no_group_only_sees_the_root_names(fs_server):
    async def body(sftp):
        assert sorted(await sftp.listdir("/")) == [".", "..", "disk0:", "harddisk:"]
        read = "read access to the files of disk0: is denied"
        async with refused(DENIED, read):
            await sftp.listdir("/disk0:")
        async with refused(DENIED, read):
            await sftp.stat("/disk0:/ovs/voucher.vcj")
        async with refused(DENIED, read):
            await sftp.stat("/disk0:/not-there")  # the same answer: nothing learned
        async with refused(DENIED, read):
            await sftp.open("/disk0:/ovs/voucher.vcj", "rb")
        for path in ("/disk0:/ovs/voucher.vcj", "/disk0:/new.bin"):
            async with refused(DENIED, "write access to the files of disk0: is denied"):
                await sftp.open(path, "wb")
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.remove("/disk0:/ovs/voucher.vcj")
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.rename("/disk0:/ovs/voucher.vcj", "/disk0:/v")
        async with refused(DENIED, "write access to the files of harddisk: is denied"):
            await sftp.mkdir("/harddisk:/d")
        async with refused(DENIED, "write access to the files of disk0: is denied"):
            await sftp.chmod("/disk0:/ovs/voucher.vcj", 0o600)
    run_sftp(fs_server, "nobody", body)
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    assert not disk(fs_server, "disk0:/new.bin").exists()
    assert not disk(fs_server, "harddisk:/d").exists()


def test_reader_reads_and_changes_nothing(fs_server):
    voucher = disk(fs_server, "disk0:/ovs/voucher.vcj")
    mode = voucher.stat().st_mode

    async def body(sftp):
        write = "write access to the files of disk0: is denied"  # neither create nor update
        assert await sftp.listdir("/disk0:/ovs") == [".", "..", "voucher.vcj"]
        async with sftp.open("/disk0:/ovs/voucher.vcj", "rb") as f:
            assert await f.read() == VOUCHER
        # opening to read may not create, truncate or append either
        for pflags in (asyncssh.FXF_READ | asyncssh.FXF_TRUNC, asyncssh.FXF_READ | asyncssh.FXF_APPEND):
            async with refused(DENIED, write):
                await sftp.open("/disk0:/ovs/voucher.vcj", pflags)
        async with refused(DENIED, write):
            await sftp.open("/disk0:/made.bin", asyncssh.FXF_READ | asyncssh.FXF_CREAT)
        # a handle opened for reading does not change the file's mode or times
        async with sftp.open("/disk0:/ovs/voucher.vcj", "rb") as f:
            async with refused(DENIED, write):
                await f.chmod(0o777)
            async with refused(DENIED, write):
                await f.utime((0, 0))
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.posix_rename("/disk0:/ovs/voucher.vcj", "/harddisk:/v")
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.rmdir("/disk0:/ovs")
    run_sftp(fs_server, "reader", body)
    assert voucher.read_bytes() == VOUCHER
    assert voucher.stat().st_mode == mode
    assert not disk(fs_server, "disk0:/made.bin").exists()


def test_writer_writes_only_where_its_rules_say(fs_server):
    async def body(sftp):
        await sftp.mkdir("/disk0:/work")
        async with sftp.open("/disk0:/work/a.bin", "wb") as f:
            await f.write(b"a" * 100)
        await sftp.rename("/disk0:/work/a.bin", "/disk0:/work/b.bin")
        await sftp.chmod("/disk0:/work/b.bin", 0o640)
        assert (await sftp.stat("/disk0:/work/b.bin")).size == 100
        assert await sftp.listdir("/harddisk:") == [".", ".."]
        async with refused(DENIED, "write access to the files of harddisk: is denied"):
            await sftp.open("/harddisk:/x.bin", "wb")
        async with refused(DENIED, "write access to the files of harddisk: is denied"):
            await sftp.rename("/disk0:/work/b.bin", "/harddisk:/b.bin")
        await sftp.remove("/disk0:/work/b.bin")
        await sftp.rmdir("/disk0:/work")
    run_sftp(fs_server, "writer", body)
    assert not disk(fs_server, "disk0:/work").exists()
    assert not disk(fs_server, "harddisk:/x.bin").exists()


def test_create_only_user_cannot_replace_what_the_admin_loaded(fs_server):
    async def body(sftp):
        async with sftp.open("/disk0:/upload.bin", "wb") as f:  # a new file: create
            await f.write(b"new")
        for pflags in ("wb", "ab"):
            async with refused(DENIED, "update access to the files of disk0: is denied"):
                await sftp.open("/disk0:/ovs/voucher.vcj", pflags)
        async with refused(DENIED, "read access to the files of disk0: is denied"):
            await sftp.open("/disk0:/ovs/voucher.vcj", "r+b")
        async with refused(DENIED, "update access to the files of disk0: is denied"):
            await sftp.truncate("/disk0:/ovs/voucher.vcj", 0)
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.posix_rename("/disk0:/upload.bin", "/disk0:/ovs/voucher.vcj")
        async with refused(DENIED, "delete access to the files of disk0: is denied"):
            await sftp.remove("/disk0:/ovs/voucher.vcj")
    run_sftp(fs_server, "dropper", body)
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    assert disk(fs_server, "disk0:/upload.bin").read_bytes() == b"new"
    remove(fs_server, "/disk0:/upload.bin")


def test_owner_changes_and_special_bits_are_refused_even_for_admin(fs_server):
    voucher = disk(fs_server, "disk0:/ovs/voucher.vcj")
    before = voucher.stat()

    async def body(sftp):
        owner = "changing the owner or group of a file is not allowed"
        special = "setuid, setgid and sticky bits are not allowed"
        async with refused(DENIED, owner):
            await sftp.chown("/disk0:/ovs/voucher.vcj", 1000, 1000)
        async with refused(DENIED, owner):
            await sftp.setstat("/disk0:/ovs/voucher.vcj", asyncssh.SFTPAttrs(uid=0, gid=0, permissions=0o600))
        for mode in (0o4755, 0o2755, 0o1777, stat.S_IFREG | 0o4644):
            async with refused(DENIED, special):
                await sftp.chmod("/disk0:/ovs/voucher.vcj", mode)
        async with sftp.open("/disk0:/ovs/voucher.vcj", "rb") as f:
            async with refused(DENIED, special):
                await f.chmod(0o6755)
            async with refused(DENIED, owner):
                await f.chown(0, 0)
        async with refused(DENIED, special):
            await sftp.open("/disk0:/suid.bin", "wb", asyncssh.SFTPAttrs(permissions=0o4755))
        async with refused(DENIED, special):
            await sftp.mkdir("/disk0:/sgid", asyncssh.SFTPAttrs(permissions=0o2775))
        async with refused(DENIED, "symbolic links are not allowed"):
            await sftp.symlink("/disk0:/ovs/voucher.vcj", "/disk0:/link")
        async with refused(DENIED, "hard links are not allowed"):
            await sftp.link("/disk0:/ovs/voucher.vcj", "/disk0:/hard")
    run_sftp(fs_server, "admin", body)
    after = voucher.stat()
    assert (after.st_mode, after.st_uid, after.st_gid) == (before.st_mode, before.st_uid, before.st_gid)
    assert not any(disk(fs_server, f"disk0:/{n}").exists() for n in ("suid.bin", "sgid", "link", "hard"))


def test_device_roots_cannot_be_removed_renamed_or_changed(fs_server):
    roots = "the device roots cannot be created, changed, renamed or removed"
    before = {d: disk(fs_server, d).stat().st_mode for d in ("disk0:", "harddisk:")}

    async def body(sftp):
        for alias in ("/disk0:", "/harddisk:/", "disk0:/.", "/disk0:/ovs/..", "/../harddisk:", "//harddisk:"):
            async with refused(DENIED, roots):
                await sftp.rmdir(alias)
            async with refused(DENIED, roots):
                await sftp.rename(alias, "/disk0:/ovs/moved")
            async with refused(DENIED, roots):
                await sftp.posix_rename(alias, "/harddisk:/moved")
            async with refused(DENIED, roots):
                await sftp.chmod(alias, 0o700)
        async with refused(DENIED, roots):
            await sftp.posix_rename("/disk0:/ovs", "/harddisk:")  # replacing a root
        async with refused(DENIED, roots):
            await sftp.rmdir("/")
        async with refused(asyncssh.FX_NO_SUCH_FILE, "not on a device (disk0:, harddisk:)"):
            await sftp.mkdir("/usb:")
    run_sftp(fs_server, "admin", body)
    assert {d: disk(fs_server, d).stat().st_mode for d in ("disk0:", "harddisk:")} == before
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER


def fs_state(srv) -> dict[str, int]:
    with srv.connect() as m:
        data = etree.fromstring(m.get(filter=("subtree", f'<device xmlns="{DEV}"><filesystem/></device>')).data_xml
                                .encode())
    return {k: int(data.findtext(f".//{{{DEV}}}{k}")) for k in ("quota-bytes", "used-bytes", "max-files", "used-files")}


def on_disk(srv) -> tuple[int, int]:
    size = count = 0
    for d in ("disk0:", "harddisk:"):
        for dirpath, dirs, files in os.walk(disk(srv, d)):
            count += len(dirs) + len(files)
            size += sum(os.lstat(os.path.join(dirpath, f)).st_size for f in files)
    return size, count


def test_quota_refuses_growth_and_leaves_the_file_as_it_was(fs_server):
    quota = "the device filesystem quota of 65536 bytes would be exceeded"
    used = fs_state(fs_server)["used-bytes"]
    room = QUOTA - used

    async def body(sftp):
        async with sftp.open("/harddisk:/big.bin", "wb") as f:
            await f.write(b"x" * (room - 10))
            with pytest.raises(asyncssh.SFTPFailure) as exc:  # past the end: a sparse file counts in full
                await f.write(b"y", room)
            assert exc.value.reason.startswith(quota)
            with pytest.raises(asyncssh.SFTPFailure) as exc:  # crossing the quota by one byte
                await f.write(b"z" * 11, room - 10)
            assert exc.value.reason.startswith(quota)
            await f.write(b"z" * 10, room - 10)  # filling it exactly is fine
            await f.write(b"w" * 5, 0)  # so is overwriting
        async with sftp.open("/harddisk:/big.bin", "ab") as f:
            with pytest.raises(asyncssh.SFTPFailure):
                await f.write(b"a")
        with pytest.raises(asyncssh.SFTPFailure) as exc:
            await sftp.truncate("/harddisk:/big.bin", room + 1)
        assert exc.value.reason.startswith(quota)
        async with sftp.open("/harddisk:/other.bin", "wb") as f:
            with pytest.raises(asyncssh.SFTPFailure):
                await f.write(b"o")
        await sftp.truncate("/harddisk:/big.bin", room - 100)
        async with sftp.open("/harddisk:/other.bin", "wb") as f:
            await f.write(b"o" * 100)
    run_sftp(fs_server, "admin", body)
    assert disk(fs_server, "harddisk:/big.bin").read_bytes() == b"w" * 5 + b"x" * (room - 105)
    state = fs_state(fs_server)
    assert (state["used-bytes"], state["used-files"]) == on_disk(fs_server)
    assert state["used-bytes"] == QUOTA

    async def renames(sftp):
        for alias in ("/harddisk:/other.bin", "/harddisk:/./other.bin"):  # onto itself frees nothing
            await sftp.posix_rename("/harddisk:/other.bin", alias)
        await sftp.posix_rename("/harddisk:/other.bin", "/harddisk:/big.bin")  # replacing frees the old one
    run_sftp(fs_server, "admin", renames)
    state = fs_state(fs_server)
    assert (state["used-bytes"], state["used-files"]) == on_disk(fs_server)
    assert state["used-bytes"] == used + 100

    async def clean(sftp):
        await sftp.remove("/harddisk:/big.bin")
    run_sftp(fs_server, "admin", clean)
    assert fs_state(fs_server)["used-bytes"] == used


def test_file_count_limit(fs_server):
    limit = f"the device filesystem limit of {MAX_FILES} files and directories would be exceeded"
    state = fs_state(fs_server)
    assert (state["quota-bytes"], state["max-files"]) == (QUOTA, MAX_FILES)
    room = MAX_FILES - state["used-files"]

    async def body(sftp):
        await sftp.mkdir("/harddisk:/many")
        for i in range(room - 1):
            async with sftp.open(f"/harddisk:/many/{i}", "wb"):
                pass
        async with refused(asyncssh.FX_FAILURE, limit):
            await sftp.open("/harddisk:/many/one-more", "wb")
        async with refused(asyncssh.FX_FAILURE, limit):
            await sftp.mkdir("/harddisk:/many/dir")
        async with sftp.open("/harddisk:/many/0", "r+b") as f:  # an existing file is no new one
            await f.write(b"0")
        async with refused(asyncssh.FX_FAILURE, limit):  # replacing one needs room for the new copy
            await sftp.open("/harddisk:/many/0", "wb")
        await sftp.rmtree("/harddisk:/many")
    run_sftp(fs_server, "admin", body)
    assert not disk(fs_server, "harddisk:/many").exists()
    assert fs_state(fs_server)["used-files"] == state["used-files"]


def test_a_refused_replacement_leaves_the_old_file(fs_server, tmp_path):
    voucher = "/disk0:/ovs/voucher.vcj"

    async def body(sftp):
        async with sftp.open(voucher, "wb") as f:
            await f.write(b"new start")
            with pytest.raises(asyncssh.SFTPFailure):
                await f.write(b"n" * QUOTA, 9)
            await f.write(b" and more", 9)  # too late: this upload has failed
            assert (await sftp.stat(voucher)).size == len(VOUCHER)  # the old file until the close
        assert await sftp.listdir("/disk0:/ovs") == [".", "..", "voucher.vcj"]
    run_sftp(fs_server, "admin", body)
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    src = tmp_path / "huge.vcj"
    src.write_bytes(b"h" * QUOTA)
    out = openssh(fs_server, "-O", str(src), "admin@127.0.0.1:disk0:/ovs/voucher.vcj")
    assert out.returncode == 1 and b"the device filesystem quota of 65536 bytes would be exceeded" in out.stderr
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    assert sorted(os.listdir(disk(fs_server, "disk0:/ovs"))) == ["voucher.vcj"]
    state = fs_state(fs_server)
    assert (state["used-bytes"], state["used-files"]) == on_disk(fs_server)

    async def replace(sftp):  # one that works replaces the file at its close
        async with sftp.open("/disk0:/ovs/voucher.vcj", "wb") as f:
            await f.write(b"replaced")
        async with sftp.open("/disk0:/ovs/voucher.vcj", "wb") as f:
            await f.write(VOUCHER)
    run_sftp(fs_server, "writer", replace)
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    assert sorted(os.listdir(disk(fs_server, "disk0:/ovs"))) == ["voucher.vcj"]
    assert (fs_state(fs_server)["used-bytes"], fs_state(fs_server)["used-files"]) == on_disk(fs_server)


@pytest.mark.parametrize("op", [
    f'<file-checksum xmlns="{DEV}"><path>disk0:/ovs/voucher.vcj</path></file-checksum>',
    f'<file-checksum xmlns="{DEV}"><path>disk0:/ovs/not-there</path></file-checksum>',
    '<install-add xmlns="http://cisco.com/ns/yang/Cisco-IOS-XR-spirit-install-act">'
    "<packagepath>disk0:/ovs</packagepath><packagename>voucher.vcj</packagename></install-add>",
    '<load-known-good-values xmlns="urn:trustplane:yang:trustplane-install"><path>disk0:/ovs/voucher.vcj</path>'
    "</load-known-good-values>",
    '<oshp-ovoc-apply xmlns="http://cisco.com/ns/yang/Cisco-IOS-XR-ownership-act">'
    "<ov-path>disk0:/ovs/voucher.vcj</ov-path><oc-path>disk0:/ovs/voucher.vcj</oc-path></oshp-ovoc-apply>",
], ids=["checksum", "checksum-missing", "install-add", "load-kgv", "ovoc-apply"])
def test_operations_read_device_files_as_the_caller(fs_server, op):
    with fs_server.connect(username="checker", password="checker-pw") as m:
        with pytest.raises(RPCError) as exc:
            rpc(m, op)
    assert (exc.value.tag, exc.value.app_tag, exc.value.type) == ("access-denied", "file-access-denied",
                                                                   "application")
    assert exc.value.message.strip() == "read access to the files of disk0: is denied"


def test_operations_read_what_the_caller_may_read(fs_server):
    with fs_server.connect(username="reader", password="reader-pw") as m:
        reply = etree.fromstring(rpc(m, f'<file-checksum xmlns="{DEV}"><path>disk0:/ovs/voucher.vcj</path>'
                                        "</file-checksum>").xml.encode())
        assert reply.findtext(f".//{{{DEV}}}size") == str(len(VOUCHER))
        with pytest.raises(RPCError) as exc:
            rpc(m, f'<file-checksum xmlns="{DEV}"><path>disk0:/ovs/not-there</path></file-checksum>')
        assert exc.value.app_tag == "file-not-found"


def self_signed_ca_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Files Root")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_certificate_requests_are_written_as_the_caller(fs_server):
    async def upload(sftp):
        async with sftp.open("/disk0:/files-root.pem", "wb") as f:
            await f.write(self_signed_ca_pem())
    run_sftp(fs_server, "admin", upload)
    act = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"
    with fs_server.connect() as m:
        rpc(m, f'<key-generate-rsa xmlns="{act}"><key-label>fskey</key-label><key-modulus>2048</key-modulus>'
               "</key-generate-rsa>")
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC}"><crypto xmlns="http://cisco.com/ns/yang/Cisco-IOS-XR-um-crypto-cfg"><ca>'
            "<trustpoint><trustpoints><trustpoint><trustpoint-name>fsca</trustpoint-name>"
            "<enrollment><terminal/></enrollment><rsakeypair>fskey</rsakeypair><subject-name>CN=fs</subject-name>"
            "</trustpoint></trustpoints></trustpoint></ca></crypto></config>"))
        rpc(m, f'<ca-authenticate xmlns="{act}"><server-name>fsca</server-name>'
               "<file-path>disk0:/files-root.pem</file-path></ca-authenticate>")
    with fs_server.connect(username="checker", password="checker-pw") as m:
        with pytest.raises(RPCError) as exc:
            rpc(m, f'<ca-enroll xmlns="{act}"><server-name>fsca</server-name>'
                   "<file-path>disk0:/fs.csr</file-path></ca-enroll>")
    assert (exc.value.tag, exc.value.app_tag) == ("access-denied", "file-access-denied")
    assert exc.value.message.strip() == "create access to the files of disk0: is denied"
    assert not disk(fs_server, "disk0:/fs.csr").exists()
    remove(fs_server, "/disk0:/files-root.pem")


def openssh(srv, *args: str, stdin: bytes | None = None, tool: str = "scp") -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-P", str(srv.port), "-i", str(srv.key_path), "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
                           *args], input=stdin, capture_output=True, timeout=30)


@pytest.mark.skipif(shutil.which("scp") is None or shutil.which("sftp") is None, reason="no OpenSSH clients")
def test_openssh_scp_and_sftp_as_each_user(fs_server, tmp_path):
    src = tmp_path / "image.bin"
    src.write_bytes(b"\x00\x01" * 500)
    here = tmp_path / "copy.vcj"
    target = lambda user, path: f"{user}@127.0.0.1:{path}"  # noqa: E731
    # the SCP protocol (-O), served by asyncssh's SCP server on the same checks
    out = openssh(fs_server, "-O", target("nobody", "disk0:/ovs/voucher.vcj"), str(here))
    assert (out.returncode, out.stderr) == (1, b"scp: No matches found\n")  # asyncssh's glob saw nothing
    assert not here.exists()
    out = openssh(fs_server, "-O", str(src), target("reader", "disk0:/image.bin"))
    assert out.returncode == 1 and b"write access to the files of disk0: is denied" in out.stderr
    out = openssh(fs_server, "-O", target("reader", "disk0:/ovs/voucher.vcj"), str(here))
    assert out.returncode == 0 and here.read_bytes() == VOUCHER
    out = openssh(fs_server, "-O", str(src), target("dropper", "disk0:/ovs/voucher.vcj"))
    assert out.returncode == 1 and b"update access to the files of disk0: is denied" in out.stderr
    out = openssh(fs_server, "-O", "-p", str(src), target("writer", "disk0:/image.bin"))
    assert out.returncode == 0, out.stderr
    # scp's SFTP mode and the sftp client
    out = openssh(fs_server, str(src), target("reader", "disk0:/image2.bin"))
    assert out.returncode == 1 and out.stderr.startswith(b'scp: dest open "disk0:/image2.bin": Permission denied\r\n')
    batch = b"put " + str(src).encode() + b" /disk0:/image3.bin\nrm /disk0:/image.bin\n"
    out = openssh(fs_server, "-b", "-", target("writer", ""), stdin=batch, tool="sftp")
    assert out.returncode == 0, out.stderr
    out = openssh(fs_server, "-b", "-", target("reader", ""), tool="sftp",
                  stdin=b"rm /disk0:/image3.bin\n")
    # OpenSSH's sftp shows the status code, not the server's text
    assert (out.returncode, out.stderr) == (1, b"remote delete /disk0:/image3.bin: Permission denied\r\n")
    assert disk(fs_server, "disk0:/image3.bin").read_bytes() == src.read_bytes()
    assert not disk(fs_server, "disk0:/image.bin").exists() and not disk(fs_server, "disk0:/image2.bin").exists()
    assert disk(fs_server, "disk0:/ovs/voucher.vcj").read_bytes() == VOUCHER
    remove(fs_server, "/disk0:/image3.bin")


@pytest.mark.skipif(shutil.which("scp") is None, reason="no scp client")
def test_scp_upload_over_the_quota_fails(fs_server, tmp_path):
    src = tmp_path / "huge.bin"
    src.write_bytes(b"h" * (QUOTA + 1))
    out = openssh(fs_server, "-O", str(src), "admin@127.0.0.1:harddisk:/huge.bin")
    assert out.returncode == 1
    assert b"the device filesystem quota of 65536 bytes would be exceeded" in out.stderr
    state = fs_state(fs_server)
    assert (state["used-bytes"], state["used-files"]) == on_disk(fs_server)
    remove(fs_server, "/harddisk:/huge.bin")


def test_a_device_over_its_quota_keeps_its_files_and_takes_no_more(tmp_path):
    (tmp_path / "state" / "fs" / "disk0:").mkdir(parents=True)
    (tmp_path / "state" / "fs" / "disk0:" / "big.bin").write_bytes(b"b" * 100)
    srv = ServerProcess(tmp_path / "state", "--fs-quota", "10").start()
    try:
        assert fs_state(srv)["used-bytes"] == 100
        assert ("the device filesystem holds 100 bytes in 1 files, over its quota of 10 bytes and 10000 files: "
                "writes that add to it are refused") in srv.log()

        async def body(sftp):
            async with sftp.open("/disk0:/big.bin", "r+b") as f:
                await f.write(b"c" * 100)  # no growth
                with pytest.raises(asyncssh.SFTPFailure):
                    await f.write(b"c", 100)
        run_sftp(srv, "admin", body)
        assert (srv.state_dir / "fs" / "disk0:" / "big.bin").read_bytes() == b"c" * 100
    finally:
        srv.stop()


@pytest.mark.parametrize("option,value", [("--fs-quota", "0"), ("--fs-max-files", "many")])
def test_limit_options_take_positive_numbers(option, value):
    out = subprocess.run([sys.executable, "-m", "trustplane.cli", "serve", option, value], capture_output=True,
                         timeout=30, cwd=ROOT)
    assert out.returncode == 2
    assert f"argument {option}: expected a positive whole number, got {value!r}".encode() in out.stderr
