"""The one XML parser for bytes from the wire or from files: no DTD, no entities, no
external references, no network, no huge trees, UTF-8 only (RFC 6241 §3)."""
from __future__ import annotations

import re

from lxml import etree

from .errors import RpcError

# What may come before the root element: the XML declaration, processing instructions,
# comments and white space. A DOCTYPE can only be there.
_PROLOG_ITEM = re.compile(rb"\s*(?:<\?.*?\?>|<!--.*?-->)", re.S)
_SPACE = re.compile(rb"\s*")
_BOM = b"\xef\xbb\xbf"


class _ExternalReference(Exception):
    pass


class _RefuseExternal(etree.Resolver):
    """libxml2 loads external parameter entities while it reads an internal DTD subset,
    even with load_dtd off, before any check after parsing could refuse the DOCTYPE."""

    def resolve(self, url, pubid, context):
        raise _ExternalReference(url)


def _parser() -> etree.XMLParser:
    parser = etree.XMLParser(
        encoding="utf-8",
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )
    parser.resolvers.add(_RefuseExternal())
    return parser


_PARSER = _parser()


def has_doctype(data: bytes) -> bool:
    """True when the document's prolog holds a DOCTYPE (or any other markup declaration)."""
    pos = len(_BOM) if data.startswith(_BOM) else 0
    while (m := _PROLOG_ITEM.match(data, pos)) is not None:
        pos = m.end()
    return data.startswith(b"<!", _SPACE.match(data, pos).end())


def parse(data: bytes) -> etree._Element:
    """Parse one document. A DOCTYPE, the only place entities can be declared, is refused
    before the parser sees it; entities are never expanded and nothing external is read."""
    if has_doctype(data):
        raise RpcError("malformed-message", "DOCTYPE and entity declarations are not allowed", type="rpc")
    try:
        root = etree.fromstring(data, _PARSER)
    except _ExternalReference:
        raise RpcError("malformed-message", "external references are not allowed", type="rpc") from None
    except etree.XMLSyntaxError as exc:
        raise RpcError("malformed-message", f"not well-formed XML: {exc}", type="rpc") from None
    if root.getroottree().docinfo.doctype:
        raise RpcError("malformed-message", "DOCTYPE and entity declarations are not allowed", type="rpc")
    return root
