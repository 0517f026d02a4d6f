"""RFC 6242 framing, bytes in and messages out, no sockets."""
import pytest

from nc_server.framing import Decoder, FramingError, encode


def messages(dec):
    out = []
    while (m := dec.next_message()) is not None:
        out.append(m)
    return out


def test_eom_messages_and_split_delimiter():
    dec = Decoder()
    dec.feed(b"<a/>]]>]]><b/>]]")
    assert messages(dec) == [b"<a/>"]
    dec.feed(b">]]")
    assert messages(dec) == []
    dec.feed(b">")
    assert messages(dec) == [b"<b/>"]
    dec.eof()


def test_eom_byte_by_byte():
    dec = Decoder()
    for b in b"<hello/>]]>]]>":
        dec.feed(bytes([b]))
    assert messages(dec) == [b"<hello/>"]


def test_eom_limit():
    dec = Decoder(max_message=10)
    dec.feed(b"0123456789]]>]]>")
    assert messages(dec) == [b"0123456789"]
    with pytest.raises(FramingError, match="larger than 10"):
        dec.feed(b"x" * 17)


def test_hello_followed_by_chunked_data_in_one_read():
    # the chunk body contains an EOM delimiter: it must not be split as base:1.0
    body = b"<rpc>]]>]]></rpc>"
    dec = Decoder()
    dec.feed(b"<hello/>]]>]]>" + encode(body, True))
    assert dec.next_message() == b"<hello/>"
    dec.switch_to_chunked()
    assert messages(dec) == [body]


def test_chunked_several_chunks_and_split_header():
    wire = encode(b"<rpc message-id='1'/>", True, max_chunk=4) + encode(b"<x/>", True)
    for cut in range(1, len(wire)):
        dec = Decoder()
        dec.switch_to_chunked()
        dec.feed(wire[:cut])
        got = messages(dec)
        dec.feed(wire[cut:])
        got += messages(dec)
        assert got == [b"<rpc message-id='1'/>", b"<x/>"], cut
        dec.eof()


def test_chunk_exactly_at_limit_and_over():
    dec = Decoder(max_message=8)
    dec.switch_to_chunked()
    dec.feed(b"\n#4\nabcd\n#4\nefgh\n##\n")
    assert messages(dec) == [b"abcdefgh"]
    with pytest.raises(FramingError, match="larger than 8"):
        dec.feed(b"\n#4\nabcd\n#5\n")


def test_huge_chunk_header_refused_before_data():
    dec = Decoder()
    dec.switch_to_chunked()
    with pytest.raises(FramingError):
        dec.feed(b"\n#4294967295\n")
    dec = Decoder()
    dec.switch_to_chunked()
    with pytest.raises(FramingError, match="bad chunk header"):
        dec.feed(b"\n#42949672950\n")


@pytest.mark.parametrize("wire", [
    b"\n#0\n",            # zero-length chunk
    b"\n#01\na",          # leading zero
    b"\n#-1\n",
    b"\n#abc\n",
    b"#4\nabcd",          # missing the leading newline
    b"\n##\n",            # end of chunks with no chunk
    b"\n#4\nabcd\n#\n",   # empty size
    b"\n#4\nabcdjunk",    # data after a chunk that is no header
    b"\n# 4\nabcd",
])
def test_bad_chunk_headers(wire):
    dec = Decoder()
    dec.switch_to_chunked()
    with pytest.raises(FramingError):
        dec.feed(wire)


def test_message_ending_mid_chunk():
    dec = Decoder()
    dec.switch_to_chunked()
    dec.feed(b"\n#10\nabc")
    with pytest.raises(FramingError, match="middle of a message"):
        dec.eof()
    dec = Decoder()
    dec.switch_to_chunked()
    dec.feed(b"\n#3\nabc")  # chunk complete, end-of-chunks missing
    with pytest.raises(FramingError):
        dec.eof()


def test_eof_mid_eom_message_and_trailing_whitespace():
    dec = Decoder()
    dec.feed(b"<a/>]]>]]>\n")
    assert messages(dec) == [b"<a/>"]
    dec.eof()
    dec.feed(b"<rpc>")
    with pytest.raises(FramingError):
        dec.eof()


def test_encode():
    assert encode(b"<a/>", False) == b"<a/>]]>]]>"
    assert encode(b"<a/>", True) == b"\n#4\n<a/>\n##\n"
    assert encode(b"abcde", True, max_chunk=2) == b"\n#2\nab\n#2\ncd\n#1\ne\n##\n"
    with pytest.raises(ValueError):
        encode(b"", True)
