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


# -- writes: every node a write creates, deletes or changes (RFC 8341 §3.4.5) ----------------------
# "writer" may change the device and config-test data, but neither read nor write the domain name,
# not change the address of the server entry "keep" nor any server's port, not delete the TLS settings
# or the SSH port, and not read the server and rule entries "hidden".
WRITER_POLICY = f"""
<nacm xmlns="{ACM}">
  <groups><group><name>writers</name><user-name>writer</user-name></group></groups>
  <rule-list>
    <name>writers</name><group>writers</group>
    <rule><name>netconf</name><module-name>ietf-netconf</module-name><rpc-name>*</rpc-name>
      <access-operations>exec</access-operations><action>permit</action></rule>
    <rule><name>no-domain</name><module-name>trustplane-device</module-name>
      <path xmlns:d="{DEV}">/d:device/d:system/d:domain-name</path>
      <access-operations>*</access-operations><action>deny</action></rule>
    <rule><name>device</name><module-name>trustplane-device</module-name>
      <access-operations>*</access-operations><action>permit</action></rule>
    <rule><name>keep</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:servers/ct:server[ct:name='keep']/ct:address</path>
      <access-operations>update delete</access-operations><action>deny</action></rule>
    <rule><name>keep-tls</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:settings/ct:tls</path>
      <access-operations>delete</access-operations><action>deny</action></rule>
    <rule><name>keep-ssh</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:settings/ct:ssh-port</path>
      <access-operations>delete</access-operations><action>deny</action></rule>
    <rule><name>fixed-ports</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:servers/ct:server/ct:port</path>
      <access-operations>update</access-operations><action>deny</action></rule>
    <rule><name>unseen</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:servers/ct:server[ct:name='hidden']</path>
      <access-operations>read</access-operations><action>deny</action></rule>
    <rule><name>unseen-rule</name><module-name>config-test</module-name>
      <path xmlns:ct="{CT}">/ct:rules/ct:rule[ct:name='hidden']</path>
      <access-operations>read</access-operations><action>deny</action></rule>
    <rule><name>config-test</name><module-name>config-test</module-name>
      <access-operations>*</access-operations><action>permit</action></rule>
  </rule-list>
</nacm>"""
DOMAIN = (f'<device xmlns="{DEV}"><system><hostname>r1</hostname><domain-name>example.com</domain-name>'
          "</system></device>")


@pytest.fixture(scope="module")
def writer_server(server):
    with server.connect() as admin:
        add_users(admin, "writer")
        admin.edit_config(target="running", config=cfg(WRITER_POLICY))
    return server


@pytest.fixture
def admin(writer_server):
    """An admin session; the device name is r1.example.com and "hidden" is the only server."""
    with writer_server.connect() as m:
        m.edit_config(target="running", config=cfg(
            f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="remove"/>'
            f'<servers xmlns="{CT}" xmlns:nc="{NC}" nc:operation="remove"/>'
            f'<rules xmlns="{CT}" xmlns:nc="{NC}" nc:operation="remove"/>'
            f'<settings xmlns="{CT}" xmlns:nc="{NC}" nc:operation="remove"/>'))
        m.edit_config(target="running", config=cfg(
            DOMAIN + f'<servers xmlns="{CT}"><server><name>hidden</name><address>10.0.0.1</address></server>'
                     "</servers>"))
        m.discard_changes()
        yield m


def config_of(m) -> bytes:
    return etree.tostring(etree.fromstring(m.get_config(source="running").data_xml.encode()), method="c14n")


def refused(srv, admin, send, tag="access-denied") -> RPCError:
    """send(writer session) must fail with tag and leave running as it was."""
    before = config_of(admin)
    with login(srv, "writer") as w:
        with pytest.raises(RPCError) as exc:
            send(w)
    assert exc.value.tag == tag, exc.value.message
    assert config_of(admin) == before
    return exc.value


def edit(config: str, **kw):
    return lambda w: w.edit_config(target="running", config=cfg(config), **kw)


def test_deleting_a_subtree_needs_delete_access_to_each_node(writer_server, admin):
    before = counters(admin)["denied-data-writes"]
    err = refused(writer_server, admin, edit(f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="delete"/>'))
    # the refused leaf is unreadable: the error names its nearest readable ancestor
    assert err.path.strip() == "/trustplane-device:device/system"
    assert err.message == "delete access to data below /trustplane-device:device/system is denied"
    assert counters(admin)["denied-data-writes"] == before + 1
    refused(writer_server, admin, edit(f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="remove"/>'))
    refused(writer_server, admin, edit(f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="replace"/>'))
    refused(writer_server, admin, edit(f'<device xmlns="{DEV}"><system><hostname>r2</hostname></system></device>',
                                       default_operation="replace"))


def test_recreating_a_subtree_cannot_set_a_denied_leaf(writer_server, admin):
    admin.edit_config(target="running", config=cfg(f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="remove"/>'))
    new = '<system><hostname>r1</hostname><domain-name>evil.example</domain-name></system>'
    for op in ("create", "merge", "replace"):
        err = refused(writer_server, admin, edit(f'<device xmlns="{DEV}" xmlns:nc="{NC}"><system nc:operation="{op}">'
                                                 + new[len("<system>"):] + "</device>"))
        # a node the request itself sent may be named
        assert err.path.strip() == "/trustplane-device:device/system/domain-name"
        assert err.message == "create access to /trustplane-device:device/system/domain-name is denied"
    with login(writer_server, "writer") as w:  # the rest of the subtree is the writer's to create
        w.edit_config(target="running", config=cfg(f'<device xmlns="{DEV}"><system><hostname>r9</hostname>'
                                                   "</system></device>"))
    assert b"r9" in config_of(admin)


def test_replacing_a_subtree_cannot_change_a_denied_leaf(writer_server, admin):
    err = refused(writer_server, admin, edit(
        f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="replace"><system><hostname>r1</hostname>'
        "<domain-name>evil.example</domain-name></system></device>"))
    assert err.message == "update access to /trustplane-device:device/system/domain-name is denied"


def test_copy_config_and_commit_check_every_node(writer_server, admin):
    # the admin's uncommitted candidate drops the device subtree
    admin.edit_config(target="candidate", config=cfg(
        f'<device xmlns="{DEV}" xmlns:nc="{NC}" nc:operation="remove"/>'))
    admin.copy_config(source="running", target="startup")
    try:
        err = refused(writer_server, admin, lambda w: w.copy_config(source="candidate", target="running"))
        assert err.path.strip() == "/trustplane-device:device/system"
        refused(writer_server, admin, lambda w: w.commit())
        before = admin.get_config(source="startup").data_xml
        refused(writer_server, admin, lambda w: w.copy_config(source="candidate", target="startup"))
        assert admin.get_config(source="startup").data_xml == before
        # and back: copying running over that candidate would create the domain name there
        before = admin.get_config(source="candidate").data_xml
        err = refused(writer_server, admin, lambda w: w.copy_config(source="running", target="candidate"))
        assert err.message == "create access to data below /trustplane-device:device/system is denied"
        assert admin.get_config(source="candidate").data_xml == before
    finally:
        admin.discard_changes()
    with login(writer_server, "writer") as w:  # its own candidate edit, committed: allowed
        w.edit_config(target="candidate", config=cfg(f'<device xmlns="{DEV}"><system><hostname>r8</hostname>'
                                                     "</system></device>"))
        w.commit()
    assert b"r8" in config_of(admin)


def test_existence_of_unreadable_nodes_is_not_revealed(writer_server, admin):
    hidden = f"<servers xmlns=\"{CT}\" xmlns:nc=\"{NC}\"><server nc:operation=\"{{op}}\"><name>{{name}}</name>" \
             "<address>10.9.9.9</address></server></servers>"
    path = "/config-test:servers/server[name='{}']"
    with login(writer_server, "writer") as w:  # the writer does not see it
        assert b"hidden" not in etree.tostring(etree.fromstring(w.get_config(source="running").data_xml.encode()))
    # present and absent answer alike: access-denied, not data-exists / data-missing
    err = refused(writer_server, admin, edit(hidden.format(op="create", name="hidden")))
    assert err.path.strip() == path.format("hidden")
    admin.edit_config(target="running", config=cfg(
        f'<servers xmlns="{CT}" xmlns:nc="{NC}"><server nc:operation="delete"><name>hidden</name></server></servers>'))
    err = refused(writer_server, admin, edit(hidden.format(op="delete", name="hidden")))
    assert err.path.strip() == path.format("hidden")
    # readable nodes still get the existence errors
    admin.edit_config(target="running", config=cfg(f'<servers xmlns="{CT}"><server><name>seen</name>'
                                                   "<address>10.0.0.2</address></server></servers>"))
    refused(writer_server, admin, edit(hidden.format(op="create", name="seen")), tag="data-exists")
    refused(writer_server, admin, edit(hidden.format(op="delete", name="gone")), tag="data-missing")


def test_validation_errors_do_not_name_unreadable_nodes(writer_server, admin):
    clash = edit(f'<servers xmlns="{CT}"><server><name>mine</name><address>10.0.0.1</address></server></servers>')
    err = refused(writer_server, admin, clash, tag="operation-failed")
    assert err.app_tag == "data-not-unique"
    assert "hidden" not in err.message and err.path is None
    assert err.message == "the configuration is not valid where you may not read it"
    with pytest.raises(RPCError) as exc:  # the admin is told which entries clash
        clash(admin)
    assert "hidden" in exc.value.message
    # the same through the candidate: validate and commit
    with login(writer_server, "writer") as w:
        w.edit_config(target="candidate", test_option="set", config=cfg(
            f'<servers xmlns="{CT}"><server><name>mine</name><address>10.0.0.1</address></server></servers>'))
        try:
            for send in (lambda: w.validate(source="candidate"), w.commit):
                with pytest.raises(RPCError) as exc:
                    send()
                assert exc.value.app_tag == "data-not-unique"
                assert exc.value.message == "the configuration is not valid where you may not read it"
        finally:
            w.discard_changes()


def test_a_rule_naming_one_entry_holds_inside_a_deleted_subtree(writer_server, admin):
    admin.edit_config(target="running", config=cfg(f'<servers xmlns="{CT}"><server><name>keep</name>'
                                                   "<address>10.0.0.3</address></server></servers>"))
    err = refused(writer_server, admin, edit(f'<servers xmlns="{CT}" xmlns:nc="{NC}" nc:operation="delete"/>'))
    assert err.message == "delete access to /config-test:servers/server[name='keep']/address is denied"


def test_default_deny_write_holds_inside_a_deleted_subtree(writer_server, admin):
    # with write-default permit, only the users' nacm:default-deny-write stops deleting /system
    nacm = f'<nacm xmlns="{ACM}"><write-default>{{}}</write-default></nacm>'
    admin.edit_config(target="running", config=cfg(nacm.format("permit")))
    try:
        err = refused(writer_server, admin, edit(f'<system xmlns="{SYS}" xmlns:nc="{NC}" nc:operation="remove"/>'))
        assert err.message == "delete access is denied"  # the writer may read nothing there
        assert err.path is None
    finally:
        admin.edit_config(target="running", config=cfg(nacm.format("deny")))


def test_operation_none_and_insert_anchors_do_not_reveal_unreadable_entries(writer_server, admin):
    # operation none on a list entry needs it to exist: the writer may not learn whether "hidden" does
    below_hidden = edit(f'<servers xmlns="{CT}" xmlns:nc="{NC}"><server><name>hidden</name>'
                        '<port nc:operation="merge">831</port></server></servers>', default_operation="none")
    err = refused(writer_server, admin, below_hidden)
    assert err.path.strip() == "/config-test:servers/server[name='hidden']"
    yang = "urn:ietf:params:xml:ns:yang:1"
    after_hidden = edit(f'<rules xmlns="{CT}" xmlns:yang="{yang}" xmlns:ct="{CT}"><rule yang:insert="after" '
                        "yang:key=\"[ct:name='hidden']\"><name>mine</name></rule></rules>")
    refused(writer_server, admin, after_hidden)  # no hidden rule yet
    admin.edit_config(target="running", config=cfg(f'<rules xmlns="{CT}"><rule><name>hidden</name></rule></rules>'))
    err = refused(writer_server, admin, after_hidden)
    assert err.path.strip() == "/config-test:rules/rule[name='hidden']"


def test_a_key_value_holding_a_bracket_does_not_escape_a_rule(writer_server, admin):
    admin.edit_config(target="running", config=cfg(f'<servers xmlns="{CT}"><server><name>a]b</name>'
                                                   "<address>10.0.0.5</address><port>830</port></server></servers>"))
    err = refused(writer_server, admin, edit(f'<servers xmlns="{CT}"><server><name>a]b</name><port>831</port>'
                                             "</server></servers>"))
    assert err.message == "update access to /config-test:servers/server[name='a]b']/port is denied"


def test_nodes_validation_deletes_are_checked_too(writer_server, admin):
    admin.edit_config(target="running", config=cfg(f'<settings xmlns="{CT}"><mode>secure</mode><tls><port>1</port>'
                                                   "</tls><ssh-port>22</ssh-port></settings>"))
    plain = f'<settings xmlns="{CT}"><mode>plain</mode></settings>'  # tls's when turns false
    err = refused(writer_server, admin, edit(plain))
    assert err.message == "delete access to /config-test:settings/tls is denied"
    err = refused(writer_server, admin, edit(f'<settings xmlns="{CT}"><tcp-port>23</tcp-port></settings>'))
    assert err.message == "delete access to /config-test:settings/ssh-port is denied"  # the other case
    refused(writer_server, admin, lambda w: w.edit_config(target="candidate", config=cfg(plain)))
    with login(writer_server, "writer") as w:  # unvalidated in the candidate; the commit validates
        w.edit_config(target="candidate", config=cfg(plain), test_option="set")
        try:
            with pytest.raises(RPCError) as exc:
                w.commit()
            assert exc.value.message == "delete access to /config-test:settings/tls is denied"
        finally:
            w.discard_changes()
    assert b"<mode>secure</mode>" in config_of(admin)
