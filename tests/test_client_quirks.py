"""What standard clients send that a strict reading would refuse, and what they expect
back: each through ncclient's own calls, as a user's script makes them."""
from lxml import etree
from ncclient.operations.rpc import RPCError
from ncclient.xml_ import to_ele
import pytest

from conftest import CT, NC

MONITORING = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
CRYPTO_ACT = "http://cisco.com/ns/yang/Cisco-IOS-XR-crypto-act"


def test_get_schema_with_an_unprefixed_format(nc):
    # ncclient sends <ns0:format>yang</ns0:format>: no default namespace is in scope
    text = nc.get_schema("ietf-netconf-monitoring", format="yang").data
    assert text.startswith("module ietf-netconf-monitoring {")
    with pytest.raises(RPCError) as err:
        nc.get_schema("ietf-netconf-monitoring", format="xsd")
    assert err.value.tag == "invalid-value"


def test_an_operation_without_a_namespace_is_a_base_operation(nc):
    nc.edit_config(target="running", config=f'<config xmlns="{NC}"><settings xmlns="{CT}"><name>plain</name>'
                                            "</settings></config>")
    # ncclient wraps it in a prefixed <nc:rpc>, so <get-config> and its parameters have no namespace
    reply = nc.dispatch(to_ele('<get-config><source><running/></source><filter type="subtree">'
                               f'<settings xmlns="{CT}"/></filter></get-config>'))
    assert etree.fromstring(reply.xml.encode()).findtext(f".//{{{CT}}}name") == "plain"
    with pytest.raises(RPCError) as err:
        nc.dispatch(to_ele("<frobnicate/>"))
    assert (err.value.tag, err.value.type) == ("operation-not-supported", "protocol")


def test_an_unknown_input_element_is_unknown_element(nc):
    with pytest.raises(RPCError) as err:
        nc.dispatch(to_ele(f'<key-generate-rsa xmlns="{CRYPTO_ACT}"><key-label>quirk</key-label>'
                           "<key-modulus>2048</key-modulus><bogus>1</bogus></key-generate-rsa>"))
    assert err.value.tag == "unknown-element"
    assert err.value.info is not None and "<bad-element>bogus</bad-element>" in err.value.info
    with pytest.raises(RPCError) as err:  # an operation the module does not have is still not supported
        nc.dispatch(to_ele(f'<no-such-operation xmlns="{CRYPTO_ACT}"/>'))
    assert err.value.tag == "operation-not-supported"


def test_report_all_tagged_uses_the_rfc_6243_attribute(nc):
    reply = nc.get_config(source="running", filter=("subtree", f'<settings xmlns="{CT}"/>'),
                          with_defaults="report-all-tagged")
    mtu = etree.fromstring(reply.xml.encode()).find(f".//{{{CT}}}mtu")
    assert mtu.get("{urn:ietf:params:xml:ns:netconf:default:1.0}default") == "true"
    assert "ietf-netconf-with-defaults" not in reply.xml


def test_the_hello_names_the_deviations_of_a_module(nc):
    system = [c for c in nc.server_capabilities if "?module=ietf-system&" in c]
    assert len(system) == 1 and system[0].endswith("&deviations=trustplane-system-deviations")
