"""RFC 6022 monitoring and get-schema, RFC 8525/7895 YANG library and the
yang-library hello capabilities, over SSH with ncclient."""
import re

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from conftest import NC, ROOT, ServerProcess, rpc

NCM = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
YL = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
M = {"m": NCM, "y": YL}


def get(m, flt: str):
    return etree.fromstring(m.get(filter=("subtree", flt)).data_xml.encode())


def content_id(caps) -> str:
    cap = next(c for c in caps if c.startswith("urn:ietf:params:netconf:capability:yang-library:1.1"))
    return re.search(r"content-id=([^&]+)", cap).group(1)


def test_yang_library_and_capabilities_agree(nc):
    caps = list(nc.server_capabilities)
    cid = content_id(caps)
    assert any(c.startswith("urn:ietf:params:netconf:capability:yang-library:1.0?revision=2016-06-21&")
               and f"module-set-id={cid}" in c for c in caps)
    lib = get(nc, f'<yang-library xmlns="{YL}"/>')
    assert lib.findtext("y:yang-library/y:content-id", namespaces=M) == cid
    names = set(lib.xpath("//y:module-set/y:module/y:name/text()", namespaces=M))
    assert {"trustplane-device", "ietf-netconf", "ietf-netconf-monitoring", "config-test"} <= names
    state = get(nc, f'<modules-state xmlns="{YL}"/>')
    assert state.findtext("y:modules-state/y:module-set-id", namespaces=M) == cid
    # no server file paths leak through schema URLs
    assert b"file://" not in etree.tostring(state)
    # :url is not implemented, so ietf-netconf does not claim the feature
    features = lib.xpath("//y:module[y:name='ietf-netconf']/y:feature/text()", namespaces=M)
    assert "candidate" in features and "url" not in features


def test_content_id_follows_the_module_set(tmp_path):
    srv = ServerProcess(tmp_path / "state").start()
    try:
        with srv.connect() as m:
            first = content_id(m.server_capabilities)
        srv.stop()
        srv.start()
        with srv.connect() as m:
            assert content_id(m.server_capabilities) == first  # same modules, same id
        srv.stop()
        srv.extra = (*srv.extra, "--yang-dir", str(ROOT / "tests" / "yang"))
        srv.start()
        with srv.connect() as m:
            assert content_id(m.server_capabilities) != first
    finally:
        srv.stop()


def test_netconf_state_sessions_locks_statistics(server, nc):
    with server.connect() as other:
        other.lock("candidate")
        with pytest.raises(RPCError):
            rpc(other, f'<get-config xmlns="{NC}"><source><nowhere/></source></get-config>')
        state = get(nc, f'<netconf-state xmlns="{NCM}"/>')
        caps = state.xpath("//m:capabilities/m:capability/text()", namespaces=M)
        assert sorted(caps) == sorted(nc.server_capabilities)
        lock = state.xpath("//m:datastore[m:name='candidate']/m:locks/m:global-lock", namespaces=M)[0]
        assert lock.findtext("m:locked-by-session", namespaces=M) == str(other.session_id)
        assert re.match(r"\d{4}-\d\d-\d\dT", lock.findtext("m:locked-time", namespaces=M))
        assert not state.xpath("//m:datastore[m:name='running']/m:locks", namespaces=M)
        row = state.xpath(f"//m:session[m:session-id='{other.session_id}']", namespaces=M)[0]
        assert row.findtext("m:username", namespaces=M) == "admin"
        assert row.findtext("m:source-host", namespaces=M) == "127.0.0.1"
        assert row.findtext("m:transport", namespaces=M).endswith(":netconf-ssh")
        assert int(row.findtext("m:in-rpcs", namespaces=M)) == 2
        assert int(row.findtext("m:out-rpc-errors", namespaces=M)) == 1
        stats = state.find("m:netconf-state/m:statistics", namespaces=M)
        assert int(stats.findtext("m:in-sessions", namespaces=M)) >= 2
        assert int(stats.findtext("m:out-rpc-errors", namespaces=M)) >= 1
    state = get(nc, f'<netconf-state xmlns="{NCM}"><datastores/></netconf-state>')
    assert not state.xpath("//m:locks", namespaces=M)  # released with the session


def test_every_schema_downloads_identically(server, nc):
    state = get(nc, f'<netconf-state xmlns="{NCM}"><schemas/></netconf-state>')
    rows = [(s.findtext("m:identifier", namespaces=M), s.findtext("m:version", namespaces=M))
            for s in state.iterfind(".//m:schema", M)]
    listed = set(get(nc, f'<yang-library xmlns="{YL}"/>').xpath("//y:module/y:name/text()", namespaces=M))
    assert listed <= {name for name, _ in rows}
    assert all(s.findtext("m:location", namespaces=M) == "NETCONF" for s in state.iterfind(".//m:schema", M))
    for name, version in rows:
        via_ncclient = nc.get_schema(name, version=version or None).data
        reply = rpc(nc, f'<get-schema xmlns="{NCM}"><identifier>{name}</identifier>'
                        f'<version>{version}</version><format>yang</format></get-schema>')
        via_dispatch = etree.fromstring(reply.xml.encode()).findtext(f".//{{{NCM}}}data")
        assert via_ncclient == via_dispatch, name
        assert re.match(r"\s*(sub)?module\s+" + re.escape(name), via_ncclient), name
    # a module read from a file comes back byte for byte
    assert nc.get_schema("trustplane-device").data == (ROOT / "yang" / "trustplane-device.yang").read_text()


@pytest.mark.parametrize("body,tag", [
    ("<identifier>no-such-module</identifier>", "invalid-value"),
    ("<identifier>trustplane-device</identifier><version>1999-01-01</version>", "invalid-value"),
    ("<identifier>trustplane-device</identifier><format>yin</format>", "invalid-value"),
    ("", "data-missing"),
])
def test_get_schema_errors(nc, body, tag):
    with pytest.raises(RPCError) as exc:
        rpc(nc, f'<get-schema xmlns="{NCM}">{body}</get-schema>')
    assert exc.value.tag == tag
