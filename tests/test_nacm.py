"""RFC 8341 access control over SSH: the fresh-device default, operations,
reads, writes and notifications, the counters, and the README's example policy."""
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, NC, rpc

ACM = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
SYS = "urn:ietf:params:xml:ns:yang:ietf-system"
DEV = "urn:trustplane:yang:trustplane-device"
NCN = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"

# The README's example policy, word for word.
EXAMPLE_POLICY = f"""
<nacm xmlns="{ACM}">
  <read-default>deny</read-default>
  <write-default>deny</write-default>
  <exec-default>deny</exec-default>
  <groups>
    <group><name>admin</name><user-name>admin</user-name></group>
    <group><name>auditors</name><user-name>auditor</user-name></group>
    <group><name>integrity</name><user-name>dossier</user-name></group>
  </groups>
  <rule-list>
    <name>admin</name><group>admin</group>
    <rule><name>permit-all</name><module-name>*</module-name>
      <access-operations>*</access-operations><action>permit</action></rule>
  </rule-list>
  <rule-list>
    <name>auditors</name><group>auditors</group>
    <rule><name>no-secrets</name><module-name>ietf-system</module-name>
      <path xmlns:sys="{SYS}">/sys:system/sys:authentication</path>
      <access-operations>*</access-operations><action>deny</action></rule>
    <rule><name>read-everything</name><module-name>*</module-name>
      <access-operations>read</access-operations><action>permit</action></rule>
    <rule><name>get</name><module-name>ietf-netconf</module-name><rpc-name>get</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
    <rule><name>get-config</name><module-name>ietf-netconf</module-name><rpc-name>get-config</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
    <rule><name>subscribe</name><module-name>notifications</module-name>
      <rpc-name>create-subscription</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
  </rule-list>
  <rule-list>
    <name>integrity</name><group>integrity</group>
    <rule><name>checksum</name><module-name>trustplane-device</module-name><rpc-name>file-checksum</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
    <rule><name>get</name><module-name>ietf-netconf</module-name><rpc-name>get</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
    <rule><name>inventory</name><module-name>trustplane-device</module-name>
      <path xmlns:d="{DEV}">/d:device/d:inventory</path>
      <access-operations>read</access-operations><action>permit</action></rule>
    <rule><name>files</name><module-name>trustplane-device</module-name>
      <path xmlns:d="{DEV}">/d:device/d:filesystem</path>
      <access-operations>read</access-operations><action>permit</action></rule>
  </rule-list>
</nacm>"""


def cfg(body: str) -> str:
    return f'<config xmlns="{NC}">{body}</config>'


def add_users(m, *names):
    users = "".join(f"<user><name>{n}</name><password>$0${n}-pw</password></user>" for n in names)
    m.edit_config(target="running", config=cfg(f'<system xmlns="{SYS}"><authentication>{users}'
                                               "</authentication></system>"))


def counters(m) -> dict[str, int]:
    data = etree.fromstring(m.get(filter=("subtree", f'<nacm xmlns="{ACM}"/>')).data_xml.encode())
    return {k: int(data.findtext(f".//{{{ACM}}}{k}")) for k in
            ("denied-operations", "denied-data-writes", "denied-notifications")}


def login(srv, name):
    return srv.connect(username=name, password=f"{name}-pw")


def test_fresh_device_is_for_admin_only(fresh_server):
    with fresh_server.connect() as admin:
        add_users(admin, "guest")
        before = counters(admin)
        with login(fresh_server, "guest") as guest:
            with pytest.raises(RPCError) as exc:
                guest.get_config(source="running")
            assert exc.value.tag == "access-denied"
            with pytest.raises(RPCError):
                guest.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><name>x</name></settings>'))
        # close-session is always allowed: leaving the with-block worked
        assert counters(admin)["denied-operations"] == before["denied-operations"] + 2


@pytest.fixture
def policy_server(fresh_server):
    with fresh_server.connect() as admin:
        add_users(admin, "auditor", "dossier", "operator")
        admin.edit_config(target="running", config=cfg(EXAMPLE_POLICY + f'<settings xmlns="{CT}"><name>s</name>'
                                                                          "</settings>"))
    return fresh_server


def test_auditor_reads_all_but_secrets_and_writes_nothing(policy_server):
    with login(policy_server, "auditor") as auditor:
        data = etree.fromstring(auditor.get_config(source="running").data_xml.encode())
        assert data.findtext(f".//{{{CT}}}name") == "s"
        assert data.find(f".//{{{SYS}}}authentication") is None  # left out silently
        assert data.find(f".//{{{ACM}}}nacm") is not None  # read-everything covers it
        state = etree.fromstring(auditor.get(filter=("subtree", f'<device xmlns="{DEV}"/>')).data_xml.encode())
        assert state.find(f".//{{{DEV}}}node") is not None
        with pytest.raises(RPCError) as exc:
            auditor.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><name>x</name></settings>'))
        assert exc.value.tag == "access-denied"


def test_write_denied_by_data_rules_changes_nothing(policy_server):
    with policy_server.connect() as admin:
        # operator may run edit-config but has no write permission on anything
        admin.edit_config(target="running", config=cfg(
            f'<nacm xmlns="{ACM}"><groups><group><name>operators</name><user-name>operator</user-name></group>'
            "</groups><rule-list><name>operators</name><group>operators</group>"
            "<rule><name>edit</name><module-name>ietf-netconf</module-name><rpc-name>edit-config</rpc-name>"
            "<access-operations>exec</access-operations><action>permit</action></rule>"
            "<rule><name>settings</name><module-name>config-test</module-name>"
            f'<path xmlns:ct="{CT}">/ct:settings/ct:mtu</path>'
            "<access-operations>create update</access-operations><action>permit</action></rule>"
            "</rule-list></nacm>"))
        before = counters(admin)
    with login(policy_server, "operator") as op:
        op.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><mtu>1400</mtu></settings>'))
        with pytest.raises(RPCError) as exc:
            op.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><name>changed</name></settings>'))
        assert exc.value.tag == "access-denied"
        assert exc.value.path.strip() == "/config-test:settings/name"
        with pytest.raises(RPCError) as exc:  # default-deny-write on the users, whatever write-default says
            op.edit_config(target="running", config=cfg(
                f'<system xmlns="{SYS}"><authentication><user><name>evil</name></user></authentication></system>'))
        assert exc.value.tag == "access-denied"
    with policy_server.connect() as admin:
        data = etree.fromstring(admin.get_config(source="running").data_xml.encode())
        assert data.findtext(f".//{{{CT}}}name") == "s"
        assert data.findtext(f".//{{{CT}}}mtu") == "1400"
        assert counters(admin)["denied-data-writes"] == before["denied-data-writes"] + 2


def test_dossier_user_runs_only_its_rpc(policy_server):
    with login(policy_server, "dossier") as d:
        with pytest.raises(RPCError) as exc:
            rpc(d, f'<file-checksum xmlns="{DEV}"><path>disk0:/none</path></file-checksum>')
        assert exc.value.tag == "data-missing"  # allowed to run: the file is just not there
        data = etree.fromstring(d.get().data_xml.encode())
        assert data.find(f".//{{{DEV}}}inventory") is not None
        assert data.find(f".//{{{CT}}}settings") is None  # no read rule: read-default deny
        with pytest.raises(RPCError) as exc:
            d.get_config(source="running")
        assert exc.value.tag == "access-denied"
        with pytest.raises(RPCError):
            d.create_subscription()


def test_notifications_are_filtered(policy_server):
    with policy_server.connect() as admin:
        admin.edit_config(target="running", config=cfg(
            f'<nacm xmlns="{ACM}" xmlns:yang="urn:ietf:params:xml:ns:yang:1"><rule-list><name>auditors</name>'
            '<rule yang:insert="first"><name>no-config-events</name>'
            "<module-name>ietf-netconf-notifications</module-name>"
            "<notification-name>netconf-config-change</notification-name>"
            "<access-operations>read</access-operations><action>deny</action></rule></rule-list></nacm>"))
        before = counters(admin)
        with login(policy_server, "auditor") as auditor:
            auditor.create_subscription()
            admin.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><name>t</name></settings>'))
            policy_server.connect().close_session()
            got = []
            while (n := auditor.take_notification(timeout=2)) is not None:
                got.append(etree.QName(etree.fromstring(n.notification_xml.encode())[1]).localname)
            assert "netconf-config-change" not in got
            assert "netconf-session-start" in got
        assert counters(admin)["denied-notifications"] > before["denied-notifications"]


def test_actions_need_exec_on_their_node(policy_server):
    action = (f'<action xmlns="urn:ietf:params:xml:ns:yang:1"><servers xmlns="{CT}"><server><name>s1</name>'
              "<restart/></server></servers></action>")
    with policy_server.connect() as admin:
        admin.edit_config(target="running", config=cfg(f'<servers xmlns="{CT}"><server><name>s1</name>'
                                                       "<address>a</address></server></servers>"))
        with pytest.raises(RPCError) as exc:
            rpc(admin, action)
        assert exc.value.tag == "operation-not-supported"  # allowed; nothing implements it
        before = counters(admin)["denied-operations"]
        with login(policy_server, "dossier") as d:
            with pytest.raises(RPCError) as exc:
                rpc(d, action)
            assert exc.value.tag == "access-denied"
        assert counters(admin)["denied-operations"] == before + 1


def change_targets(m) -> list[list[str]]:
    """The edit targets of each netconf-config-change that arrives."""
    out = []
    while (n := m.take_notification(timeout=2)) is not None:
        el = etree.fromstring(n.notification_xml.encode())[1]
        if etree.QName(el).localname == "netconf-config-change":
            out.append([e.findtext(f"{{{NCN}}}target") for e in el.iter(f"{{{NCN}}}edit")])
    return out


def test_config_change_edits_of_unreadable_data_are_left_out(policy_server):
    secret = ("/ietf-system:system/ietf-system:authentication/ietf-system:user"
              "[ietf-system:name='hidden-key']")
    with policy_server.connect() as admin, login(policy_server, "auditor") as auditor:
        auditor.create_subscription()
        # an edit of data the auditor may not read: no notification at all
        add_users(admin, "hidden-key")
        # the same commit changes readable data: only that edit is reported
        admin.edit_config(target="running", config=cfg(
            f'<settings xmlns="{CT}"><name>seen</name></settings><system xmlns="{SYS}"><authentication>'
            "<user><name>hidden-two</name><password>$0$x</password></user></authentication></system>"))
        assert change_targets(auditor) == [["/config-test:settings/config-test:name"]]
        # the admin sees both, with the key values
        admin.create_subscription(start_time="2000-01-01T00:00:00Z")
        assert [secret] in change_targets(admin)
    # replay is filtered the same way
    with login(policy_server, "auditor") as auditor:
        auditor.create_subscription(start_time="2000-01-01T00:00:00Z")
        seen = [t for ts in change_targets(auditor) for t in ts]
        assert "/config-test:settings/config-test:name" in seen
        assert not [t for t in seen if "hidden" in t or "authentication" in t]
