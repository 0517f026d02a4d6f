"""Backend data as libyang trees: the one encoding, type checks as the tree is built, and
RPC output printed from the tree."""
from __future__ import annotations

import libyang
import pytest

from yangcore import datastore, datatree
from yangcore.schema import build_context

DEV = "urn:trustplane:yang:trustplane-device"


@pytest.fixture(scope="module")
def ctx():
    return build_context(["trustplane-device"], [])


def test_state_escapes_text_and_skips_none(ctx):
    tree = datatree.state(ctx, {"trustplane-device:device": {"inventory": {
        "chassis": {"product-id": "A&B <x>", "serial-number": "FOC2301ABCD", "description": None}}}})
    try:
        xml = datastore.to_xml(tree)
    finally:
        datastore.free(tree)
    assert "<product-id>A&amp;B &lt;x&gt;</product-id>" in xml
    assert "description" not in xml


def test_state_value_of_the_wrong_type_is_refused(ctx):
    with pytest.raises(datatree.DataError, match=r"Invalid type uint64 value \"lots\""):
        datatree.state(ctx, {"trustplane-device:device": {"filesystem": {"quota-bytes": "lots"}}})


def test_unknown_node_and_unqualified_top_are_refused(ctx):
    with pytest.raises(datatree.DataError, match="no-such-node"):
        datatree.state(ctx, {"trustplane-device:device": {"no-such-node": 1}})
    with pytest.raises(datatree.DataError, match="needs its module name"):
        datatree.state(ctx, {"device": {}})
    with pytest.raises(datatree.DataError, match='no module "nope"'):
        datatree.state(ctx, {"nope:device": {}})


def _op(ctx):
    msg = (b'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" message-id="1">'
           b'<file-checksum xmlns="urn:trustplane:yang:trustplane-device"><path>disk0:/a</path></file-checksum></rpc>')
    return ctx.parse_op_mem("xml", msg, libyang.DataType.RPC_NETCONF)


def test_output_is_printed_from_the_tree_with_its_namespace(ctx):
    op = _op(ctx)
    try:
        xml = datatree.output(ctx, op.cdata, {"path": "disk0:/<a>", "size": 3, "checksum": "ab"}, None)
    finally:
        op.free()
    assert xml == (f'<path xmlns="{DEV}">disk0:/&lt;a&gt;</path><size xmlns="{DEV}">3</size>'
                   f'<checksum xmlns="{DEV}">ab</checksum>')


def test_output_of_the_wrong_type_is_refused(ctx):
    op = _op(ctx)
    try:
        with pytest.raises(datatree.DataError, match=r"Value \"-1\" is out of type uint64"):
            datatree.output(ctx, op.cdata, {"path": "p", "size": -1, "checksum": "ab"}, None)
    finally:
        op.free()


def test_identities_are_module_qualified_as_in_rfc_7951():
    ctx = build_context(["ietf-netconf-monitoring"], [])
    data = {"ietf-netconf-monitoring:netconf-state": {"sessions": {"session": [{
        "session-id": 1, "transport": "ietf-netconf-monitoring:netconf-ssh", "username": "a:b",
        "source-host": "::1", "login-time": "2026-12-05T10:00:00Z", "in-rpcs": 0, "in-bad-rpcs": 0,
        "out-rpc-errors": 0, "out-notifications": 0}]}}}
    tree = datatree.state(ctx, data)
    try:
        session = tree.find_path("/ietf-netconf-monitoring:netconf-state/sessions/session[session-id='1']")
        assert '"transport": "ietf-netconf-monitoring:netconf-ssh"' in tree.print_mem("json")
        assert session.find_path("username").value() == "a:b"  # a string that looks like one is kept as it is
    finally:
        datastore.free(tree)
    data["ietf-netconf-monitoring:netconf-state"]["sessions"]["session"][0]["transport"] = "no-module:netconf-ssh"
    with pytest.raises(datatree.DataError, match="no-module:netconf-ssh"):
        datatree.state(ctx, data)
