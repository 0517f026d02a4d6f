"""Configured secrets: a trustpoint's SCEP challenge password is given in clear, kept and shown
only in its type 6 form (encrypted under the device's master key), readable only with an
explicit NACM permit, and used in clear in the certificate request."""
import re
import subprocess

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import NC, ServerProcess
from test_nacm import ACM, add_users, cfg, login
from test_pki import CFG, OpensslCA, act, disk, trustpoint_cfg

CLEAR = "Challenge-S3cret"


def challenge_cfg(name: str, password: str) -> str:
    return trustpoint_cfg(name, "<enrollment><terminal/></enrollment>"
                                f"<challenge-password><password6>{password}</password6></challenge-password>")


def stored(m, name: str, source: str = "running") -> str | None:
    data = etree.fromstring(m.get_config(source=source, filter=(
        "subtree", trustpoint_cfg(name, ""))).data_xml.encode())
    return data.findtext(f".//{{{CFG}}}password6")


def edit_error(m, body: str, target: str = "running") -> RPCError:
    with pytest.raises(RPCError) as info:
        m.edit_config(target=target, config=cfg(body))
    return info.value


def app_tag(err: RPCError) -> str:
    return err.xml.findtext(f"{{{NC}}}error-app-tag")


@pytest.mark.parametrize("given, tp", [(CLEAR, "t6tp"), ("!" + CLEAR, "t6bang")])  # '!': Cisco's clear-text mark
def test_stored_and_shown_only_in_type6_form_and_used_in_clear(server, tmp_path, given, tp):
    with server.connect() as m:
        act(m, "key-generate-rsa", f"<key-label>{tp}key</key-label><key-modulus>2048</key-modulus>")
        m.edit_config(target="running", config=cfg(challenge_cfg(tp, given).replace(
            "<enrollment>", f"<rsakeypair>{tp}key</rsakeypair><enrollment>")))
        m.edit_config(target="candidate", config=cfg(challenge_cfg("t6cand", CLEAR)))
        shown = stored(m, tp)
        assert shown.startswith("t6:") and CLEAR not in shown
        assert stored(m, "t6cand", "candidate").startswith("t6:")
        assert CLEAR.encode() not in (server.state_dir / "datastore" / "running.xml").read_bytes()
        key = server.state_dir / "type6.key"
        assert key.stat().st_mode & 0o777 == 0o600

        # the type 6 form it shows is taken back as it is
        m.edit_config(target="running", config=cfg(challenge_cfg(tp, shown)))
        assert stored(m, tp) == shown

        # enrollment uses the configured password in clear
        ca = OpensslCA(tmp_path / "ca", f"Type6 Root {tp}")
        (disk(server) / "t6ca.pem").write_text(ca.pem)
        act(m, "ca-authenticate", f"<server-name>{tp}</server-name><file-path>disk0:/t6ca.pem</file-path>")
        act(m, "ca-enroll", f"<server-name>{tp}</server-name><file-path>disk0:/{tp}.csr</file-path>")
        req = subprocess.run(["openssl", "req", "-in", str(disk(server) / f"{tp}.csr"), "-noout", "-text"],
                             capture_output=True, check=True).stdout.decode()
        assert re.search(rf"challengePassword\s*:{CLEAR}\n", req)
    assert CLEAR not in server.log()


@pytest.mark.parametrize("value, tag, app", [
    ("t6:" + "A" * 60, "invalid-value", "type6-invalid"),      # not made by this device's key
    ("t6:!!", "invalid-value", "type6-invalid"),
    ("x" * 129, "invalid-value", "password-too-long"),
])
def test_bad_values_are_refused_and_change_nothing(server, value, tag, app):
    with server.connect() as m:
        m.edit_config(target="running", config=cfg(challenge_cfg("t6bad", "before")))
        before = stored(m, "t6bad")
        err = edit_error(m, challenge_cfg("t6bad", value))
        assert (err.tag, app_tag(err)) == (tag, app)
        assert "password6" in (err.xml.findtext(f"{{{NC}}}error-path") or "")
        assert stored(m, "t6bad") == before
        err = edit_error(m, challenge_cfg("t6bad", value), target="candidate")
        assert app_tag(err) == app


def test_hidden_from_readers_without_an_explicit_permit(fresh_server):
    """default-deny-all: read-default permit does not cover it (a rule that matches it would)."""
    with fresh_server.connect() as admin:
        add_users(admin, "reader")
        admin.edit_config(target="running", config=cfg(
            challenge_cfg("t6nacm", CLEAR)
            + f'<nacm xmlns="{ACM}"><read-default>permit</read-default><groups><group><name>readers</name><user-name>reader</user-name></group>'
              "</groups><rule-list><name>readers</name><group>readers</group>"
              "<rule><name>get-config</name><module-name>ietf-netconf</module-name><rpc-name>get-config</rpc-name>"
              "<access-operations>exec</access-operations><action>permit</action></rule>"
              "</rule-list></nacm>"))
        assert stored(admin, "t6nacm").startswith("t6:")
    with login(fresh_server, "reader") as reader:
        data = etree.fromstring(reader.get_config(source="running").data_xml.encode())
        assert data.find(f".//{{{CFG}}}trustpoint-name") is not None
        assert data.find(f".//{{{CFG}}}challenge-password") is None


def test_clear_text_of_an_older_running_is_protected_at_start(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    srv.stop()
    running = srv.state_dir / "datastore" / "running.xml"
    running.write_text(running.read_text() + challenge_cfg("old", CLEAR))
    srv.start()
    try:
        with srv.connect() as m:
            assert stored(m, "old").startswith("t6:")
        assert CLEAR.encode() not in running.read_bytes()
    finally:
        srv.stop()
