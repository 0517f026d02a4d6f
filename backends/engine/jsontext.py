"""JSON text from outside (RFC 8259), read so that two readers cannot read it two ways:
UTF-8 only (a byte order mark is passed over), one value and nothing after it, no
duplicate member names at any depth, no NaN or Infinity literals, integers of at most
MAX_INT_DIGITS digits, nesting as deep as the parser's recursion limit allows.
Every refusal is a JsonTextError with a message that says which rule the text broke.
"""
from __future__ import annotations

import json

from .errors import EngineError

MAX_INT_DIGITS = 64


class JsonTextError(EngineError):
    """Callers name the document and give their own code; this one is for a caller that does not."""

    def __init__(self, message: str):
        super().__init__("json-invalid", message, "invalid-value")


def _object(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        name = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JsonTextError(f'member name "{name}" appears twice in one object')
    return obj


def _constant(name: str):
    raise JsonTextError(f"{name} is not a JSON value (RFC 8259 section 6)")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JsonTextError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_INT_DIGITS * 2:
        raise JsonTextError(f"a number of {len(text)} characters (at most {MAX_INT_DIGITS * 2})")
    return float(text)


# json.loads would run the regular expression engine to skip whitespace: the JSON
# whitespace is trimmed by hand and the text read with raw_decode
_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_constant=_constant, parse_int=_integer,
                            parse_float=_float)


def loads(content: bytes):
    """The value of a JSON text."""
    try:
        text = content.decode()
    except UnicodeDecodeError as exc:
        raise JsonTextError(f"not UTF-8 (RFC 8259 section 8.1): {exc}") from None
    text = (text[1:] if text.startswith("\ufeff") else text).strip(" \t\n\r")
    try:
        value, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise JsonTextError(str(exc)) from None
    except RecursionError:
        raise JsonTextError("nested deeper than this reader allows") from None
    if end != len(text):
        raise JsonTextError(f"extra data after the JSON value at character {end}")
    return value
