"""RFC 7317 local users over NETCONF, kept in step with SSH logins and with the
offline `trustplane user` command."""
import asyncio
import json
import subprocess
import sys

import asyncssh
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError
from ncclient.transport.errors import AuthenticationError

from conftest import NC, ROOT, ServerProcess

SYS = "urn:ietf:params:xml:ns:yang:ietf-system"


def users_cfg(*users: str, op: str = "") -> str:
    attr = f' xmlns:nc="{NC}" nc:operation="{op}"' if op else ""
    return f'<config xmlns="{NC}"><system xmlns="{SYS}"><authentication{attr}>{"".join(users)}' \
           "</authentication></system></config>"


def user(name: str, password: str | None = None, keys: str = "") -> str:
    pw = f"<password>{password}</password>" if password else ""
    return f"<user><name>{name}</name>{pw}{keys}</user>"


def configured(m, source="running") -> etree._Element:
    return etree.fromstring(m.get_config(source=source, filter=("subtree", f'<system xmlns="{SYS}"/>'))
                            .data_xml.encode())


def openssl_passwd(variant: str, password: str) -> str:
    return subprocess.run(["openssl", "passwd", variant, "-stdin"], input=password + "\n", capture_output=True,
                          text=True, check=True).stdout.strip()


def test_admin_appears_without_its_hash(fresh_server):
    with fresh_server.connect() as m:
        data = configured(m)
        assert data.xpath("//s:user/s:name/text()", namespaces={"s": SYS}) == ["admin"]
        assert not data.xpath("//s:password", namespaces={"s": SYS})


def test_cleartext_is_hashed_and_the_user_can_log_in(fresh_server):
    srv = fresh_server
    with srv.connect() as m:
        m.edit_config(target="candidate", config=users_cfg(user("ops", "$0$ops-secret")))
        # hashed at once: not even the candidate holds the clear text
        for source in ("candidate", "running"):
            if source == "running":
                m.commit()
            pw = configured(m, source).xpath("//s:user[s:name='ops']/s:password/text()", namespaces={"s": SYS})
            assert pw and pw[0].startswith("$6$rounds=") and "ops-secret" not in pw[0]
        assert "ops-secret" not in (srv.state_dir / "users.json").read_text()
        assert "ops-secret" not in (srv.state_dir / "datastore" / "running.xml").read_text()
        with srv.connect(username="ops", password="ops-secret") as ops:
            assert ops.session_id
        # an openssl-made SHA-256-crypt hash works as given
        m.edit_config(target="running", config=users_cfg(user("ops", openssl_passwd("-5", "other-pw"))))
        with srv.connect(username="ops", password="other-pw") as ops:
            assert ops.session_id
        with pytest.raises(AuthenticationError):
            srv.connect(username="ops", password="ops-secret")
        # removing the user ends its logins; admin is untouched
        m.edit_config(target="running", config=users_cfg(
            f'<user xmlns:nc="{NC}" nc:operation="delete"><name>ops</name></user>'))
        with pytest.raises(AuthenticationError):
            srv.connect(username="ops", password="other-pw")
    with srv.connect() as m:
        assert m.session_id


def test_authorized_key_login(fresh_server, tmp_path):
    srv = fresh_server
    key = asyncssh.generate_private_key("ssh-ed25519")
    alg, data = key.export_public_key().decode().split()[:2]
    with srv.connect() as m:
        m.edit_config(target="running", config=users_cfg(user(
            "robot", keys=f"<authorized-key><name>ci</name><algorithm>{alg}</algorithm>"
                          f"<key-data>{data}</key-data></authorized-key>")))
    (tmp_path / "id").write_bytes(key.export_private_key())
    with srv.connect(username="robot", password=None, key_filename=str(tmp_path / "id")) as robot:
        assert robot.session_id


@pytest.mark.parametrize("password,tag,app_tag", [
    ("plain", "invalid-value", None),
    ("$6$x", "invalid-value", None),
    (None, "invalid-value", "weak-password-hash"),  # an MD5-crypt hash, made below
])
def test_bad_hashes(fresh_server, password, tag, app_tag):
    password = password or openssl_passwd("-1", "md5-pw")
    with fresh_server.connect() as m:
        before = (fresh_server.state_dir / "users.json").read_text()
        with pytest.raises(RPCError) as exc:
            m.edit_config(target="running", config=users_cfg(user("weak", password)))
        assert (exc.value.tag, exc.value.app_tag) == (tag, app_tag)
        assert (fresh_server.state_dir / "users.json").read_text() == before


def test_offline_cli_edits_show_up_at_start(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    srv.stop()
    cli = [sys.executable, "-m", "trustplane.cli", "user", "--state-dir", str(srv.state_dir)]
    subprocess.run([*cli, "add", "auditor", "--password-stdin"], input="audit-pw\n", text=True, check=True,
                   cwd=ROOT)
    subprocess.run([*cli, "add", "hashed", "--password-hash", openssl_passwd("-6", "h-pw")], check=True, cwd=ROOT)
    bad = subprocess.run([*cli, "add", "x", "--password-hash", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "crypt hash" in bad.stderr
    long = subprocess.run([*cli, "add", "y", "--password-stdin"], input="x" * 257 + "\n", capture_output=True,
                          text=True, cwd=ROOT)
    assert (long.returncode, long.stderr) == (2, "trustplane: a password may have at most 256 bytes\n")
    listed = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert listed == ["admin", "auditor", "hashed"]
    srv.start()
    try:
        with srv.connect(username="auditor", password="audit-pw") as m:
            assert m.session_id
        with srv.connect() as m:
            names = configured(m).xpath("//s:user/s:name/text()", namespaces={"s": SYS})
            assert names == ["admin", "auditor", "hashed"]
            # scrypt hashes (admin, auditor) stay out of the configuration; the crypt hash shows
            assert configured(m).xpath("//s:user/s:password/../s:name/text()", namespaces={"s": SYS}) == ["hashed"]
        with srv.connect(username="hashed", password="h-pw") as m:
            assert m.session_id
    finally:
        srv.stop()
    assert json.loads((srv.state_dir / "users.json").read_text())["users"]["admin"]["password"].startswith("$scrypt$")


def test_the_last_user_cannot_be_removed(fresh_server):
    with fresh_server.connect() as m:
        with pytest.raises(RPCError) as exc:
            m.edit_config(target="running", config=users_cfg(op="remove"))
        assert (exc.value.tag, exc.value.app_tag) == ("operation-failed", "no-local-users")
        with pytest.raises(RPCError) as exc:
            m.copy_config(source="startup", target="running")  # startup is empty
        assert exc.value.app_tag == "no-local-users"
    with fresh_server.connect() as m:
        assert m.session_id


def test_password_length_is_capped(fresh_server):
    srv = fresh_server
    with srv.connect() as m:
        before = etree.tostring(configured(m, "candidate"))
        with pytest.raises(RPCError) as exc:
            m.edit_config(target="candidate", config=users_cfg(user("ops", "$0$" + "x" * 257)))
        assert (exc.value.tag, exc.value.app_tag) == ("invalid-value", "bad-password")
        assert exc.value.message == 'user "ops": a password may have at most 256 bytes'
        with pytest.raises(RPCError) as exc:
            m.edit_config(target="candidate", config=users_cfg(*(user(f"u{i}", "$0$pw") for i in range(17))))
        assert (exc.value.tag, exc.value.app_tag) == ("too-big", "too-many-cleartext-passwords")
        assert exc.value.message == "at most 16 clear-text ($0$) passwords in one operation, not 17"
        assert etree.tostring(configured(m, "candidate")) == before
        longest = "p" * 256
        m.edit_config(target="running", config=users_cfg(user("ops", "$0$" + longest)))
    with srv.connect(username="ops", password=longest) as ops:
        assert ops.session_id

    async def long_login():
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(srv.host, srv.port, username="ops", password="x" * 24 * 1024,
                                   known_hosts=None, client_keys=None, preferred_auth="password")

    asyncio.run(long_login())
    assert "password for 'ops' refused unchecked: a password may have at most 256 bytes" in srv.log()


def test_cleartext_is_hashed_in_a_worker_thread(monkeypatch):
    import threading

    from nc_server import local_users
    threads = []
    real = local_users.crypt_hash
    monkeypatch.setattr(local_users, "crypt_hash", lambda pw: threads.append(threading.current_thread().name)
                        or real(pw))
    op = etree.fromstring(f'<edit-config xmlns="{NC}"><target><running/></target>'
                          f'{users_cfg(user("a", "$0$pw-a"), user("b", "$6$salt$h"), user("c", "$0$pw-c"))}'
                          "</edit-config>")
    asyncio.run(local_users.hash_cleartext(op))
    assert len(threads) == 2 and all(t.startswith("password-hash") for t in threads)
    hashes = op.xpath("//s:password/text()", namespaces={"s": SYS})
    assert hashes[1] == "$6$salt$h"
    for pw, hashed in zip(("pw-a", "pw-c"), hashes[::2]):
        salt = hashed.split("$")[3]
        # openssl computes the same string: an independent SHA-512-crypt
        assert hashed == subprocess.run(["openssl", "passwd", "-6", "-salt", f"rounds=100000${salt}", "-stdin"],
                                        input=pw + "\n", capture_output=True, text=True).stdout.strip()
