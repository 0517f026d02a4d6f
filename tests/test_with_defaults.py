"""RFC 6243 with-defaults on get, get-config and copy-config: every mode, on
defaults in a container, in list entries and in a choice case; each reply is
parsed back by libyang."""
import libyang
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import CONFIG_TEST_YANG, CT, NC, ROOT, rpc

WD = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
WD_DEFAULT = "urn:ietf:params:xml:ns:netconf:default:1.0"  # RFC 6243 §6: the default attribute
IETF = ROOT / ".venv" / "share" / "yang" / "modules" / "ietf"


@pytest.fixture(scope="module")
def ctx():
    c = libyang.Context(f"{CONFIG_TEST_YANG}:{IETF}")
    c.load_module("config-test")
    c.load_module("ietf-netconf-with-defaults")
    yield c
    c.destroy()


@pytest.fixture
def configured(nc):
    nc.edit_config(target="running", config=f'''<config xmlns="{NC}"><settings xmlns="{CT}">
        <name>n</name><mode>plain</mode><tcp-port>23</tcp-port></settings>
        <servers xmlns="{CT}"><server><name>a</name><address>x</address></server>
        <server><name>b</name><address>y</address><port>830</port></server></servers></config>''')
    return nc


def fetch(m, op: str, mode: str | None, ctx) -> etree._Element:
    wd = f'<with-defaults xmlns="{WD}">{mode}</with-defaults>' if mode else ""
    flt = f'<filter type="subtree"><settings xmlns="{CT}"/><servers xmlns="{CT}"/></filter>'
    source = "<source><running/></source>" if op == "get-config" else ""
    reply = rpc(m, f'<{op} xmlns="{NC}">{source}{flt}{wd}</{op}>')
    data = etree.fromstring(reply.xml.encode()).find(f"{{{NC}}}data")
    body = "".join(etree.tostring(c).decode() for c in data)
    # the default attribute is RFC 6243's, never libyang's annotation ...
    assert WD not in body
    # ... and libyang accepts the reply, with the attribute named as libyang knows it
    ctx.parse_data_mem(body.replace(WD_DEFAULT, WD), "xml", parse_only=True, strict=True).free()
    return data


def leaves(data, name) -> list[tuple[str, bool]]:
    """(value, tagged default) of every leaf with this name."""
    return [(e.text, e.get(f"{{{WD_DEFAULT}}}default") == "true") for e in data.iter(f"{{{CT}}}{name}")]


@pytest.mark.parametrize("op", ["get-config", "get"])
def test_modes(configured, ctx, op):
    # explicit (the basic mode, also with no parameter): what was set, even if equal to the default
    for mode in (None, "explicit"):
        data = fetch(configured, op, mode, ctx)
        assert leaves(data, "mtu") == [] and leaves(data, "tcp-keepalive") == []
        assert leaves(data, "mode") == [("plain", False)]
        assert leaves(data, "port") == [("830", False)]
    # report-all: every default too, in the container, each list entry and the active case
    data = fetch(configured, op, "report-all", ctx)
    assert leaves(data, "mtu") == [("1500", False)]
    assert leaves(data, "port") == [("830", False), ("830", False)]
    assert leaves(data, "tcp-keepalive") == [("true", False)]
    # report-all-tagged: the same, with every node that holds its default value tagged
    data = fetch(configured, op, "report-all-tagged", ctx)
    assert leaves(data, "mtu") == [("1500", True)]
    assert leaves(data, "port") == [("830", True), ("830", True)]
    assert leaves(data, "tcp-keepalive") == [("true", True)]
    assert leaves(data, "mode") == [("plain", True)]
    assert leaves(data, "name")[0] == ("n", False)
    # trim: no node that holds its default value, set or not
    data = fetch(configured, op, "trim", ctx)
    assert leaves(data, "mtu") == [] and leaves(data, "mode") == [] and leaves(data, "port") == []
    assert leaves(data, "tcp-port") == [("23", False)]


def test_inactive_case_defaults_never_appear(nc, ctx):
    nc.edit_config(target="running", config=f'<config xmlns="{NC}"><settings xmlns="{CT}">'
                                            "<ssh-port>22</ssh-port></settings></config>")
    data = fetch(nc, "get-config", "report-all", ctx)
    assert leaves(data, "tcp-keepalive") == []
    assert leaves(data, "ssh-port") == [("22", False)]


def test_bad_mode_and_copy_config(configured):
    with pytest.raises(RPCError) as exc:
        rpc(configured, f'<get xmlns="{NC}"><with-defaults xmlns="{WD}">all-of-them</with-defaults></get>')
    assert exc.value.tag == "invalid-value"
    rpc(configured, f'<copy-config xmlns="{NC}"><target><startup/></target><source><running/></source>'
                    f'<with-defaults xmlns="{WD}">report-all</with-defaults></copy-config>')
    with pytest.raises(RPCError) as exc:
        rpc(configured, f'<copy-config xmlns="{NC}"><target><startup/></target><source><running/></source>'
                        f'<with-defaults xmlns="{WD}">sometimes</with-defaults></copy-config>')
    assert exc.value.tag == "invalid-value"


def test_capability(nc):
    cap = next(c for c in nc.server_capabilities if c.startswith("urn:ietf:params:netconf:capability:with-defaults"))
    assert "basic-mode=explicit" in cap
    assert "also-supported=report-all,report-all-tagged,trim" in cap
