"""Hostile XML before and after login: a DOCTYPE is refused before libxml2 sees it, and no
external reference (entity, parameter entity, external subset) is ever opened."""
import asyncio
import errno
import os

import pytest
from lxml import etree

from nc_server import xmlsafe
from nc_server.errors import RpcError
from test_session import BASE11, Raw, chunk, error_of, hello, parse, run


def _reader_present(fifo) -> bool:
    """Whether some process holds the FIFO open for reading (opening it blocks until a writer comes)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENXIO
        return False
    os.close(fd)  # lets a blocked reader go on
    return True


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "probe"
    os.mkfifo(path)
    return path


def pe_doctype(path) -> str:
    return f'<!DOCTYPE x [<!ENTITY % d SYSTEM "file://{path}"> %d;]>'


def test_parameter_entity_in_hello_is_never_opened(server, fifo):
    """Before any authorization: a server that opened the FIFO would block in open() until a writer came."""
    async def go():
        async with Raw(server) as s:
            s.writer.write(pe_doctype(fifo).encode() + hello(BASE11))
            assert await s.closed(timeout=10)
    run(go())
    assert not _reader_present(fifo)
    assert "unparsable hello: DOCTYPE and entity declarations are not allowed" in server.log()


def test_parameter_entity_in_rpc_is_malformed_message(server, fifo):
    async def go():
        async with Raw(server) as s:
            s.writer.write(hello(BASE11))
            s.writer.write(chunk(f'<?xml version="1.0"?>\n<!-- c -->\n{pe_doctype(fifo)}'
                                 f'<rpc message-id="1" xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                                 "<get-config><source><running/></source></get-config></rpc>"))
            reply = await asyncio.wait_for(s.read_chunked(), 10)
            err = error_of(parse(reply))
            assert err["error-tag"].text == "malformed-message"
            assert "DOCTYPE" in err["error-message"].text
    run(go())
    assert not _reader_present(fifo)


@pytest.mark.parametrize("prolog", [
    b"", b'<?xml version="1.0"?>', b'\xef\xbb\xbf<?xml version="1.0"?>\n<!-- a --> <?pi x?>\n\t',
])
def test_doctype_found_in_any_prolog(prolog):
    assert xmlsafe.has_doctype(prolog + b"<!DOCTYPE x><x/>")
    assert not xmlsafe.has_doctype(prolog + b"<x><![CDATA[<!DOCTYPE y>]]></x>")


def test_parser_refuses_what_the_prolog_scan_cannot_see(tmp_path):
    """Behind the scan, the parser itself never loads an external reference."""
    doc = f'{pe_doctype(tmp_path / "absent.dtd")}<x/>'.encode()
    with pytest.raises(xmlsafe._ExternalReference):
        etree.fromstring(doc, xmlsafe._PARSER)


def test_only_utf8():
    """NETCONF messages are UTF-8 (RFC 6241 §3): another declared encoding is not honoured."""
    doc = '<?xml version="1.0" encoding="UTF-16"?><x/>'.encode("utf-16")
    with pytest.raises(RpcError) as info:
        xmlsafe.parse(doc)
    assert info.value.tag == "malformed-message"
