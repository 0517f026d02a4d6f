"""edit-config over SSH with ncclient: operations, default-operation, test-option,
error-option and libyang validation, each failure checked for its exact error
and for leaving the datastore untouched."""
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CT, KEEP_ADMIN, NC

NS = {"ct": CT}


def cfg(body: str) -> str:
    return f'<config xmlns="{NC}" xmlns:nc="{NC}">{body}</config>'


def settings(body: str) -> str:
    return f'<settings xmlns="{CT}">{body}</settings>'


def servers(*entries: str) -> str:
    return f'<servers xmlns="{CT}">{"".join(entries)}</servers>'


def server_entry(name, address, port=None, extra="", op=None) -> str:
    attr = f' nc:operation="{op}"' if op else ""
    port_el = f"<port>{port}</port>" if port is not None else ""
    return f"<server{attr}><name>{name}</name><address>{address}</address>{port_el}{extra}</server>"


def running(m, xpath="/ct:*"):
    reply = m.get_config(source="running", filter=("xpath", (NS, xpath)))
    return etree.fromstring(reply.data_xml.encode())


def texts(tree, xpath) -> list[str]:
    return [e.text for e in tree.xpath(xpath, namespaces={"ct": CT, "nc": NC})]


def snapshot(m) -> bytes:
    return etree.tostring(running(m), method="c14n")


def fails(m, config, tag, *, app_tag=None, path=None, message=None, **kw) -> RPCError:
    """The edit must fail with this error and change nothing."""
    before = snapshot(m)
    with pytest.raises(RPCError) as exc:
        m.edit_config(target="running", config=cfg(config), **kw)
    err = exc.value
    assert err.tag == tag, err.message
    if app_tag is not None:
        assert err.app_tag == app_tag
    if path is not None:
        assert err.path.strip() == path
    if message is not None:
        assert message in err.message
    assert snapshot(m) == before
    return err


def test_merge_creates_and_updates(nc):
    nc.edit_config(target="running", config=cfg(settings("<name>a</name><mtu>1400</mtu>")))
    nc.edit_config(target="running", config=cfg(settings("<mtu>1300</mtu>")))
    tree = running(nc)
    assert texts(tree, "//ct:settings/ct:name") == ["a"]
    assert texts(tree, "//ct:settings/ct:mtu") == ["1300"]


def test_create_existing_is_data_exists(nc):
    nc.edit_config(target="running", config=cfg(servers(server_entry("s1", "10.0.0.1"))))
    err = fails(nc, servers(server_entry("s1", "10.0.0.9", op="create")), "data-exists")
    assert err.type == "application"
    assert err.path.strip() == "/config-test:servers/server[name='s1']"


def test_delete_missing_is_data_missing_and_remove_is_silent(nc):
    fails(nc, settings('<name nc:operation="delete"/>'), "data-missing",
          path="/config-test:settings/name")
    nc.edit_config(target="running", config=cfg(settings('<name nc:operation="remove"/>')))
    nc.edit_config(target="running", config=cfg(settings("<name>x</name>")))
    nc.edit_config(target="running", config=cfg(settings('<name nc:operation="delete"/>')))
    assert texts(running(nc), "//ct:settings/ct:name") == []


def test_delete_list_entry_and_leaf_list_value(nc):
    nc.edit_config(target="running", config=cfg(servers(
        server_entry("s1", "a", extra="<tag>x</tag><tag>y</tag>"), server_entry("s2", "b"))))
    nc.edit_config(target="running", config=cfg(servers(
        server_entry("s2", "b", op="delete"),
        '<server><name>s1</name><tag nc:operation="delete">x</tag></server>')))
    tree = running(nc)
    assert texts(tree, "//ct:server/ct:name") == ["s1"]
    assert texts(tree, "//ct:server/ct:tag") == ["y"]


def test_replace_subtree(nc):
    nc.edit_config(target="running", config=cfg(servers(server_entry("s1", "a", 1, "<tag>x</tag>"))))
    nc.edit_config(target="running", config=cfg(servers(
        '<server nc:operation="replace"><name>s1</name><address>b</address></server>')))
    tree = running(nc)
    assert texts(tree, "//ct:server/ct:address") == ["b"]
    assert texts(tree, "//ct:server/ct:tag") == []
    assert texts(tree, "//ct:server/ct:port") == []


def test_default_operation_replace_replaces_everything(nc):
    nc.edit_config(target="running", config=cfg(settings("<name>a</name>") + servers(server_entry("s1", "a"))))
    nc.edit_config(target="running", config=cfg(settings("<mtu>2000</mtu>") + KEEP_ADMIN),
                   default_operation="replace")
    tree = running(nc)
    assert texts(tree, "//ct:server/ct:name") == []
    assert texts(tree, "//ct:settings/ct:name") == []
    assert texts(tree, "//ct:settings/ct:mtu") == ["2000"]


def test_default_operation_none(nc):
    # none: the containers in the request create nothing ...
    nc.edit_config(target="running", config=cfg(settings("<name>a</name>")), default_operation="none")
    assert texts(running(nc), "//ct:settings/ct:name") == []
    # ... but an explicit operation inside still works
    nc.edit_config(target="running", config=cfg(settings('<name nc:operation="merge">b</name>')),
                   default_operation="none")
    assert texts(running(nc), "//ct:settings/ct:name") == ["b"]
    # and delete of a missing node is still an error
    fails(nc, settings('<mtu nc:operation="delete"/>'), "data-missing", default_operation="none")


@pytest.mark.parametrize("body,tag,app_tag,path", [
    (settings("<mtu>50</mtu>"), "invalid-value", None, "/config-test:settings/mtu"),
    (settings("<mtu>abc</mtu>"), "invalid-value", None, "/config-test:settings/mtu"),
    (settings("<mode>loud</mode>"), "invalid-value", None, "/config-test:settings/mode"),
    (settings("<nosuch>1</nosuch>"), "unknown-element", None, None),
    (settings("<ipv6>true</ipv6><mtu>1000</mtu>"), "operation-failed", "mtu-too-small", "/config-test:settings"),
    (settings("<tls/>"), "unknown-element", None, "/config-test:settings/tls"),
    (settings("<peer>nobody</peer>"), "data-missing", "instance-required", "/config-test:settings/peer"),
    # libyang 2.1 locates a missing mandatory node by its schema path only
    (servers("<server><name>s9</name></server>"), "data-missing", None, "/config-test:servers/server/address"),
    (servers(server_entry("a", "x", 1), server_entry("b", "x", 1)), "operation-failed", "data-not-unique", None),
    (servers(*(server_entry(f"s{i}", f"h{i}") for i in range(5))), "operation-failed", "too-many-elements", None),
    (f'<group xmlns="{CT}"/>', "operation-failed", "too-few-elements", None),
    (servers("<server><address>x</address></server>"), "missing-element", None, None),
])
def test_invalid_edits_change_nothing(nc, body, tag, app_tag, path):
    nc.edit_config(target="running", config=cfg(settings("<name>keep</name>")))
    fails(nc, body, tag, app_tag=app_tag, path=path)
    assert texts(running(nc), "//ct:settings/ct:name") == ["keep"]


def test_when_condition_met(nc):
    nc.edit_config(target="running", config=cfg(settings("<mode>secure</mode><tls><port>7000</port></tls>")))
    assert texts(running(nc), "//ct:tls/ct:port") == ["7000"]
    # leaving secure mode: the when-false container goes away (RFC 7950 §8.3.2 auto-delete)
    nc.edit_config(target="running", config=cfg(settings("<mode>plain</mode>")))
    assert texts(running(nc), "//ct:tls/ct:port") == []


def test_choice_cases_replace_each_other(nc):
    nc.edit_config(target="running", config=cfg(settings("<ssh-port>22</ssh-port>")))
    nc.edit_config(target="running", config=cfg(settings("<tcp-port>23</tcp-port>")))
    tree = running(nc)
    assert texts(tree, "//ct:ssh-port") == []
    assert texts(tree, "//ct:tcp-port") == ["23"]


def test_unknown_namespace(nc):
    err = fails(nc, '<thing xmlns="urn:nowhere"/>', "unknown-namespace")
    assert "urn:nowhere" in err.info


def test_state_data_refused(nc):
    fails(nc, '<device xmlns="urn:trustplane:yang:trustplane-device"><inventory><chassis>'
              "<product-id>x</product-id></chassis></inventory></device>", "invalid-value")


def test_bad_operation_attribute(nc):
    err = fails(nc, settings('<name nc:operation="frobnicate">a</name>'), "bad-attribute")
    assert "operation" in err.info


def test_test_only_validates_and_changes_nothing(nc):
    nc.edit_config(target="running", config=cfg(settings("<mtu>1400</mtu>")), test_option="test-only")
    assert texts(running(nc), "//ct:settings/ct:mtu") == []
    fails(nc, settings("<mtu>1</mtu>"), "invalid-value", test_option="test-only")


def test_rollback_on_error_applies_nothing(nc):
    body = settings("<name>new</name>") + servers(server_entry("s1", "a", op="delete"))
    fails(nc, body, "data-missing", error_option="rollback-on-error")


def test_stop_on_error_keeps_earlier_edits(nc):
    body = settings("<name>first</name>") + servers(server_entry("s1", "a", op="delete")) + \
        f'<rules xmlns="{CT}"><rule><name>late</name></rule></rules>'
    with pytest.raises(RPCError) as exc:
        nc.edit_config(target="running", config=cfg(body), error_option="stop-on-error")
    assert exc.value.tag == "data-missing"
    tree = running(nc)
    # delete and remove run first, so the failing delete stops before any merge
    assert texts(tree, "//ct:settings/ct:name") == []
    assert texts(tree, "//ct:rule/ct:name") == []


def test_stop_on_error_after_merges(nc):
    nc.edit_config(target="running", config=cfg(servers(server_entry("s1", "a"))))
    body = settings("<name>first</name>") + servers(server_entry("s1", "b", op="create")) + \
        f'<rules xmlns="{CT}"><rule><name>late</name></rule></rules>'
    with pytest.raises(RPCError) as exc:
        nc.edit_config(target="running", config=cfg(body), error_option="stop-on-error")
    assert exc.value.tag == "data-exists"
    tree = running(nc)
    assert texts(tree, "//ct:settings/ct:name") == ["first"]
    assert texts(tree, "//ct:rule/ct:name") == []


def test_continue_on_error_applies_the_rest(nc):
    nc.edit_config(target="running", config=cfg(servers(server_entry("s1", "a"))))
    body = servers(server_entry("s1", "b", op="create"), server_entry("s2", "c", op="create")) + \
        settings('<mtu nc:operation="delete"/><name>n</name>')
    with pytest.raises(RPCError) as exc:
        nc.edit_config(target="running", config=cfg(body), error_option="continue-on-error")
    tags = sorted(e.tag for e in exc.value.errors)
    assert tags == ["data-exists", "data-missing"]
    tree = running(nc)
    assert texts(tree, "//ct:server/ct:name") == ["s1", "s2"]
    assert texts(tree, "//ct:server[ct:name='s1']/ct:address") == ["a"]
    assert texts(tree, "//ct:settings/ct:name") == ["n"]


def test_continue_on_error_still_validates_the_result(nc):
    # the edits that succeed must still give a valid datastore, or nothing changes
    fails(nc, servers(server_entry("s1", "a", op="create"), "<server><name>s2</name></server>"),
          "data-missing", error_option="continue-on-error")


def test_user_ordered_insert(nc):
    yang = "urn:ietf:params:xml:ns:yang:1"
    rules = f'<rules xmlns="{CT}" xmlns:yang="{yang}" xmlns:ct="{CT}">'
    nc.edit_config(target="running", config=cfg(
        rules + "<rule><name>a</name></rule><rule><name>c</name></rule></rules>"))
    nc.edit_config(target="running", config=cfg(
        rules + "<rule yang:insert=\"before\" yang:key=\"[ct:name='c']\"><name>b</name></rule>"
        "<rule yang:insert=\"first\"><name>z</name></rule></rules>"))
    assert texts(running(nc), "//ct:rule/ct:name") == ["z", "a", "b", "c"]
    err = fails(nc, rules + "<rule yang:insert=\"after\" yang:key=\"[ct:name='nope']\"><name>y</name></rule></rules>",
                "bad-attribute", app_tag="missing-instance")
    assert "nope" in err.message


def test_bad_parameters(nc):
    from conftest import rpc
    for body, tag in [
        ("<target><running/></target>", "missing-element"),
        ("<target><nowhere/></target><config/>", "invalid-value"),
        ("<target><startup/></target><config/>", "invalid-value"),
        ("<target><running/></target><default-operation>merge-ish</default-operation><config/>",
         "invalid-value"),
        ("<target><running/></target><error-option>stop</error-option><config/>", "invalid-value"),
        ("<target><running/></target><config/><bogus/>", "unknown-element"),
    ]:
        with pytest.raises(RPCError) as exc:
            rpc(nc, f'<edit-config xmlns="{NC}">{body}</edit-config>')
        assert exc.value.tag == tag, body


def test_large_edit_is_one_merge(nc):
    entries = "".join(f"<entry><name>e{i}</name><value>{i}</value></entry>" for i in range(2000))
    nc.edit_config(target="running", config=cfg(f'<bulk xmlns="{CT}">{entries}</bulk>'))
    tree = running(nc, "/ct:bulk")
    assert len(texts(tree, "//ct:entry")) == 2000
    assert texts(tree, "//ct:entry[ct:name='e1999']/ct:value") == ["1999"]


def test_a_list_key_cannot_be_deleted_whether_its_entry_exists_or_not(nc):
    # decided by the schema: the answer must not tell whether the entry exists
    nc.edit_config(target="running", config=cfg(servers(server_entry("s1", "10.0.0.1"))))
    for name in ("s1", "absent"):
        for op in ("delete", "remove"):
            err = fails(nc, servers(f'<server><name nc:operation="{op}">{name}</name></server>'), "bad-element",
                        path=f"/config-test:servers/server[name='{name}']/name",
                        message="a list key cannot be deleted on its own")
            assert err.info is not None and "<bad-element>name</bad-element>" in err.info
