"""The one XML parser for bytes from the wire: no entities, no DTD, no network, no huge trees."""
from __future__ import annotations

from lxml import etree

from .errors import RpcError


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


_PARSER = _parser()


def parse(data: bytes) -> etree._Element:
    """Parse one message. Entities are never expanded, and a document with a
    DOCTYPE (the only place entities can be declared) is refused."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise RpcError("malformed-message", f"not well-formed XML: {exc}", type="rpc") from None
    if root.getroottree().docinfo.doctype:
        raise RpcError("malformed-message", "DOCTYPE and entity declarations are not allowed", type="rpc")
    return root
