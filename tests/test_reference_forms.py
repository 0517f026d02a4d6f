"""Where a faster form replaced a readable one, the readable one is written out here and the
two are held to the same answers (accept or refuse, and the same value) over generated and
hand-picked inputs. The budget per property is TRUSTPLANE_FUZZ_EXAMPLES examples, as in
test_fuzz_readers.

- voucher dates: shapes looked up in a set, against the RFC 3339 ABNF as a pattern;
- JSON text: whitespace trimmed by hand and raw_decode, against json.loads with the same hooks;
- backend data as a libyang tree: one parse of an XML encoding, against the binding's
  node-by-node `parse_data_dict`;
- RFC 6242 framing: bytes decoded as they arrive (the delimiter search resumed, chunk headers
  judged on a prefix), against the whole stream split by the RFC's grammar;
- edit-config without operation attributes: one libyang merge, against the node-by-node walk
  an explicit merge operation takes.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone

import libyang
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from backends.engine import jsontext
from backends.engine.onboarding import voucher
from backends.engine.onboarding.voucher import VoucherError
from nc_server.edit import apply_edit
from nc_server.errors import NC_NS
from nc_server.framing import EOM, MAX_CHUNK_SIZE, Decoder, FramingError, encode
from yangcore import datastore, datatree
from yangcore.schema import build_context
from conftest import CT, ROOT

EXAMPLES = int(os.environ.get("TRUSTPLANE_FUZZ_EXAMPLES", "150"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
REFUSED = "refused"


# ---- RFC 3339 date-time ------------------------------------------------------------------

# RFC 3339 section 5.6; "T" and "Z" may be lower case (the NOTE there). The voucher bounds
# time-secfrac ("." 1*DIGIT) to nanoseconds.
RFC3339 = re.compile(r"""
    (?P<year>[0-9]{4}) - (?P<month>[0-9]{2}) - (?P<day>[0-9]{2})
    [Tt]
    (?P<hour>[0-9]{2}) : (?P<minute>[0-9]{2}) : (?P<second>[0-9]{2}) (?: \. (?P<fraction>[0-9]{1,9}) )?
    (?: [Zz] | (?P<sign>[+-]) (?P<offset_hour>[0-9]{2}) : (?P<offset_minute>[0-9]{2}) )
    """, re.VERBOSE | re.ASCII)


def reference_datetime(text):
    """The voucher's reading of an RFC 3339 date-time: a leap second is taken as the second
    before it, digits past microseconds are dropped, the UTC time lies in the years 1 to 9999."""
    m = RFC3339.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        return REFUSED
    hour, minute, second = int(m["hour"]), int(m["minute"]), int(m["second"])
    offset_hour, offset_minute = int(m["offset_hour"] or 0), int(m["offset_minute"] or 0)
    if hour > 23 or minute > 59 or second > 60 or offset_hour > 23 or offset_minute > 59:
        return REFUSED
    offset = timedelta(hours=offset_hour, minutes=offset_minute) * (-1 if m["sign"] == "-" else 1)
    microsecond = int((m["fraction"] or "")[:6].ljust(6, "0"))
    try:
        local = datetime(int(m["year"]), int(m["month"]), int(m["day"]), hour, minute, min(second, 59),
                         microsecond)
        return (local - offset).replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        return REFUSED


def fast_datetime(text):
    try:
        value = voucher.parse_datetime(text, "created-on")
    except VoucherError as exc:
        assert exc.code == "ov-malformed"
        return REFUSED
    assert value.tzinfo is timezone.utc
    return value


DATES = [
    "2026-05-01T10:00:00Z", "2026-05-01t10:00:00z", "2026-05-01T10:00:00.5+05:30", "2026-05-01T10:00:00-00:00",
    "2024-02-29T00:00:00Z", "2026-02-29T00:00:00Z", "2026-04-31T00:00:00Z", "2026-13-01T00:00:00Z",
    "2026-00-01T00:00:00Z", "0000-01-01T00:00:00Z", "2026-12-31T23:59:60Z", "2026-06-30T12:00:60+02:00",
    "2026-01-01T24:00:00Z", "2026-01-01T00:60:00Z", "2026-01-01T00:00:61Z",
    "2026-01-01T00:00:00+00:60", "2026-01-01T00:00:00+05:99", "2026-01-01T00:00:00+23:59", "2026-01-01T00:00:00+24:00",
    "2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00.1234567890Z", "2026-01-01T00:00:00." + "9" * 40 + "Z",
    "2026-01-01T00:00:00.Z", "2026-01-01T00:00:00Z ", " 2026-01-01T00:00:00Z", "2026-01-01 00:00:00Z",
    "2026-01-01T00:00:00", "2026-01-01T00:00Z", "20260101T000000Z", "2026-01-01T00:00:00+0100",
    "0001-01-01T00:00:00+00:01", "0001-01-01T00:00:00-00:01", "9999-12-31T23:59:59-00:01", "9999-12-31T23:59:59Z",
    "２０２６-01-01T00:00:00Z", "2026-01-01T00:00:00\ud800", "", 20260101, None,
]


@pytest.mark.parametrize("text", DATES)
def test_rfc3339_shapes_read_dates_as_the_abnf_does(text):
    assert fast_datetime(text) == reference_datetime(text)


EDGES = {"month": ["00", "02", "12", "13"], "day": ["00", "28", "29", "30", "31", "32"],
         "hour": ["00", "23", "24", "99"], "minute": ["59", "60"], "second": ["59", "60", "61", "99"],
         "offset_hour": ["00", "23", "24"], "offset_minute": ["00", "59", "60", "99"]}


@st.composite
def dates(draw):
    """A date-time in RFC 3339 form, with at most one of its numbers pushed to an edge."""
    def two(low, high):
        return f"{draw(st.integers(low, high)):02d}"
    parts = {"month": two(1, 12), "day": two(1, 28), "hour": two(0, 23), "minute": two(0, 59),
             "second": two(0, 59), "offset_hour": two(0, 23), "offset_minute": two(0, 59)}
    edge = draw(st.sampled_from([None, *EDGES]))
    if edge:
        parts[edge] = draw(st.sampled_from(EDGES[edge]))
    year = f"{draw(st.sampled_from([1, 2024, 2026, 9999])):04d}"
    fraction = draw(st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=14).map(".{}".format)))
    offset = draw(st.sampled_from(["Z", "z", "+", "-"]))
    if offset in "+-":
        offset += f"{parts['offset_hour']}:{parts['offset_minute']}"
    return (f"{year}-{parts['month']}-{parts['day']}{draw(st.sampled_from('Tt'))}"
            f"{parts['hour']}:{parts['minute']}:{parts['second']}{fraction}{offset}")


@BUDGET
@given(st.one_of(dates(), st.text("0123456789-:.+TZtz ", max_size=32),
                 st.builds(lambda date, at, ch: date[:at] + ch + date[at + 1:],
                           st.sampled_from([d for d in DATES if isinstance(d, str)]), st.integers(0, 40),
                           st.characters())))
def test_rfc3339_shapes_agree_with_the_abnf(text):
    assert fast_datetime(text) == reference_datetime(text)


# ---- JSON text -----------------------------------------------------------------------------

def reference_json(content: bytes):
    """json.loads with the reader's hooks, over the text as UTF-8 without its byte order mark."""
    try:
        return json.loads(content.decode("utf-8").removeprefix("\ufeff"), object_pairs_hook=jsontext._object,
                          parse_constant=jsontext._constant, parse_int=jsontext._integer,
                          parse_float=jsontext._float)
    except (UnicodeDecodeError, json.JSONDecodeError, jsontext.JsonTextError, RecursionError):
        return REFUSED


def fast_json(content: bytes):
    try:
        return jsontext.loads(content)
    except jsontext.JsonTextError:
        return REFUSED


def same_json(content: bytes):
    # repr tells 1 from 1.0 and True, and keeps the order of members
    assert repr(fast_json(content)) == repr(reference_json(content))


JSON_TEXTS = [
    b"", b" ", b"{}", b"\xef\xbb\xbf{}", b"\xef\xbb\xbf\xef\xbb\xbf{}", b" \xef\xbb\xbf{}", b" \t\r\n[1] \r\n\t",
    b"\x0c{}", b"{}\x0b", b"{}\xc2\xa0", b"{} {}", b"{}x", b"[1,]", b'{"a":1,"a":2}', b'{"a":{"b":1,"b":1}}',
    b"NaN", b"[-Infinity]", b"1e999", b"-0", b"-0.0", b"1" * 64, b"1" * 65, b"-" + b"1" * 64, b"0." + b"1" * 127,
    b"0." + b"1" * 127 + b"1", b'"\\ud800"', b'"\xe2\x80\xa8"', b"\xff", b"\xfe\xff\x00{\x00}", b"[" * 100_000,
    b"[" * 50 + b"]" * 50, b"true", b"nul", b"01", b"1.", b'"a\x00"', b'"\\u0000"',
]


@pytest.mark.parametrize("content", JSON_TEXTS)
def test_raw_decode_reads_json_as_json_loads_does(content):
    same_json(content)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10 ** 70, 10 ** 70), st.floats(allow_nan=False),
              st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)
WHITE = st.text(" \t\r\n\x0b\x0c\xa0", max_size=3)


@BUDGET
@given(st.one_of(
    st.builds(lambda bom, before, value, after: (bom + before + json.dumps(value) + after).encode(),
              st.sampled_from(["", "\ufeff"]), WHITE, JSON_VALUES, WHITE),
    st.text('{}[]",:0123456789.eE+-truefalsnNI \t\r\n\ufeff\\u', max_size=24).map(str.encode),
    st.binary(max_size=24)))
def test_raw_decode_agrees_with_json_loads(content):
    same_json(content)


# ---- backend data as a libyang tree ---------------------------------------------------------

DEVICE_CTX = build_context(["trustplane-device"], [])
DEVICE = DEVICE_CTX.get_module("trustplane-device")


def printed(build, exceptions, data):
    try:
        tree = build(data)
    except exceptions:
        return REFUSED
    try:
        return datastore.to_xml(tree)
    finally:
        datastore.free(tree)


def fast_tree(data: dict):
    return printed(lambda d: datatree.state(DEVICE_CTX, d), datatree.DataError, data)


def reference_tree(data: dict):
    return printed(lambda d: DEVICE.parse_data_dict(d, validate=False, strict=True), libyang.LibyangError, data)


def xml_can_carry(value) -> bool:
    """XML 1.0's Char production; the binding builds a tree of any text, then prints XML that
    no parser reads back, where the encoding refuses the text (the backend's bug)."""
    return not isinstance(value, str) or re.fullmatch(
        "[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*", value) is not None


def leaves(data):
    for value in data.values() if isinstance(data, dict) else data:
        if isinstance(value, (dict, list)):
            yield from leaves(value)
        else:
            yield value


def same_tree(data: dict):
    fast = fast_tree(data)
    if all(xml_can_carry(v) for v in leaves(data)):
        assert fast == reference_tree(data)
    else:
        assert fast == REFUSED


@pytest.mark.parametrize("value", ["A&B <x> ]]>", " spaced ", "a\rb\r\n", "\t", "\x85\u2028", "", "\x01", "\ufffe",
                                   "\U0001f600", 7, True])
def test_one_xml_parse_builds_the_tree_parse_data_dict_builds(value):
    same_tree({"trustplane-device:device": {"inventory": {"chassis": {"description": value}}}})


TEXT = st.one_of(st.text(st.characters(blacklist_categories=["Cs"]), max_size=12),
                 st.sampled_from(["FOC2231X0AB", "0/RP0/CPU0", "&amp;", "<a/>", " x", "x "]))
NUMBER = st.one_of(st.integers(-1, 2 ** 64), st.sampled_from(["lots", "12", "-0", " 1"]), st.booleans())
NODE = st.fixed_dictionaries({"location": TEXT}, optional={
    "serial-number": TEXT, "product-id": TEXT, "role": st.sampled_from(["active", "standby", "none", "lead", ""]),
    "idevid": st.fixed_dictionaries({}, optional={k: TEXT for k in ("subject", "issuer", "serial")})})
DEVICE_DATA = st.fixed_dictionaries({}, optional={
    "inventory": st.fixed_dictionaries({}, optional={
        "chassis": st.fixed_dictionaries({}, optional={"product-id": TEXT, "serial-number": TEXT,
                                                       "description": TEXT}),
        "node": st.lists(NODE, max_size=3)}),
    "filesystem": st.fixed_dictionaries({}, optional={
        "quota-bytes": NUMBER, "used-files": NUMBER, "root": st.lists(st.fixed_dictionaries({"name": TEXT}),
                                                                      max_size=3)})})


@BUDGET
@given(DEVICE_DATA)
def test_one_xml_parse_agrees_with_parse_data_dict(data):
    same_tree({"trustplane-device:device": data})


# ---- RFC 6242 framing -----------------------------------------------------------------------

def reference_eom(stream: bytes):
    """Messages and whether the stream is refused: what follows the last delimiter may only be
    white space."""
    *messages, tail = stream.split(EOM)
    return messages, tail.strip() != b""


# RFC 6242 section 4.2: chunk = LF HASH chunk-size LF chunk-data; end-of-chunks = LF HASH HASH LF
CHUNK = re.compile(rb"\n#([1-9][0-9]*)\n")


def reference_chunked(stream: bytes):
    """Messages and whether the stream is refused: it ends after a message, or a line feed
    after one."""
    messages, chunks, pos = [], [], 0
    while pos < len(stream):
        if chunks and stream.startswith(b"\n##\n", pos):
            messages.append(b"".join(chunks))
            chunks, pos = [], pos + 4
            continue
        m = CHUNK.match(stream, pos)
        if m is None or int(m[1]) > MAX_CHUNK_SIZE or m.end() + int(m[1]) > len(stream):
            break
        chunks.append(stream[m.end():m.end() + int(m[1])])
        pos = m.end() + int(m[1])
    return messages, chunks != [] or stream[pos:] not in (b"", b"\n")


def fast_framing(stream: bytes, cuts: list[int], chunked: bool):
    dec = Decoder()
    if chunked:
        dec.switch_to_chunked()
    messages, refused = [], False
    try:
        for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
            dec.feed(stream[start:stop])
            while (message := dec.next_message()) is not None:
                messages.append(message)
        dec.eof()
    except FramingError:
        refused = True
        while (message := dec.next_message()) is not None:
            messages.append(message)
    return messages, refused


@st.composite
def framed(draw, chunked: bool):
    """A stream of messages, perhaps with a few bytes changed, and where it is cut into reads."""
    bodies = st.binary(min_size=chunked, max_size=24) | st.text("]>a \n#", min_size=chunked, max_size=24).map(str.encode)
    stream = b"".join(encode(body, chunked, draw(st.integers(1, 8))) for body in draw(st.lists(bodies, max_size=4)))
    stream += draw(st.sampled_from([b"", b"\n", b" \r\n", b"]]>]]", b"\n#", b"\n#12", b"\n##\n"]))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(stream)))
        stream = stream[:at] + draw(st.binary(max_size=2) | st.sampled_from([b"\n", b"#", b"0", b"]]>"])) + \
            stream[at + draw(st.integers(0, 2)):]
    return stream, sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))


FRAMINGS = [b"", b"\n", b"<a/>]]>]]>", b"<a/>]]>]]]>]]>", b"]]>]]>]]>]]>", b"<a/>]]>]]> \n", b"<a/>]]>]]>x",
            b"\n#1\na\n##\n", b"\n#1\na\n##\n\n", b"\n##\n", b"\n#0\n\n##\n", b"\n#01\na\n##\n",
            b"\n#4294967295\n", b"\n#4294967296\na", b"\n#12345678901\n", b"\n#2\nab\n#1\nc\n##\n\n#1\nd",
            b"\n#1\na\n##\n ", b"\r\n#1\na\n##\n"]


@pytest.mark.parametrize("stream", FRAMINGS)
@pytest.mark.parametrize("chunked", [False, True])
def test_framing_as_bytes_arrive_reads_as_the_grammar_does(stream, chunked):
    reference = (reference_chunked if chunked else reference_eom)(stream)
    assert fast_framing(stream, [], chunked) == reference
    assert fast_framing(stream, list(range(1, len(stream))), chunked) == reference


@BUDGET
@given(framed(False))
def test_eom_framing_agrees_with_splitting_the_stream(case):
    stream, cuts = case
    assert fast_framing(stream, cuts, False) == reference_eom(stream)


@BUDGET
@given(framed(True))
def test_chunked_framing_agrees_with_the_grammar(case):
    stream, cuts = case
    assert fast_framing(stream, cuts, True) == reference_chunked(stream)


# ---- edit-config: one merge or the walk ------------------------------------------------------

EDIT_CTX = build_context(["ietf-netconf", "config-test"], [ROOT / "tests" / "yang-config"])


def edited(start: str, edit: str, operation: str | None):
    tree, errors = apply_edit(EDIT_CTX, None, etree.fromstring(start))
    assert errors == []
    config = etree.fromstring(edit)
    if operation:
        for top in config:
            top.set(f"{{{NC_NS}}}operation", operation)
    tree, errors = apply_edit(EDIT_CTX, tree, config)
    try:
        return datastore.to_xml(tree), [(e.tag, e.message) for e in errors]
    finally:
        datastore.free(tree)


NAMES = st.sampled_from(["a", "b", "c"])
CONFIG_BODY = st.lists(st.one_of(
    st.builds("<settings xmlns='{}'>{}</settings>".format, st.just(CT), st.lists(st.sampled_from([
        "<name>n1</name>", "<name>n2</name>", "<mtu>1500</mtu>", "<mtu>9000</mtu>", "<ipv6>true</ipv6>",
        "<mode>secure</mode>", "<mode>plain</mode>", "<tls><port>1</port></tls>", "<ssh-port>22</ssh-port>",
        "<tcp-port>23</tcp-port>", "<tcp-keepalive>false</tcp-keepalive>"]), max_size=4).map("".join)),
    st.builds(lambda entries: f"<servers xmlns='{CT}'>{''.join(entries)}</servers>", st.lists(st.builds(
        "<server><name>{}</name><address>{}</address>{}{}</server>".format, NAMES, st.sampled_from(["x", "y"]),
        st.sampled_from(["", "<port>1</port>", "<port>2</port>"]),
        st.lists(NAMES.map("<tag>{}</tag>".format), max_size=2).map("".join)), max_size=3)),
    st.builds(lambda names: f"<rules xmlns='{CT}'>{''.join(names)}</rules>",
              st.lists(NAMES.map("<rule><name>{0}</name><action>{0}</action></rule>".format), max_size=3)),
    st.builds(lambda names: f"<group xmlns='{CT}'>{''.join(names)}</group>",
              st.lists(NAMES.map("<member>{}</member>".format), max_size=3))), max_size=3).map(
    lambda tops: f"<config xmlns='{NC_NS}'>{''.join(tops)}</config>")


@BUDGET
@given(CONFIG_BODY, CONFIG_BODY)
def test_one_merge_edits_as_the_walk_does(start, edit):
    assert edited(start, edit, None) == edited(start, edit, "merge")
