"""Property-based fuzzing of the readers of outside input (vouchers, CMS, bundles): whatever
the bytes, only the engine's typed errors come out. The budget per property is
TRUSTPLANE_FUZZ_EXAMPLES examples (a few seconds in all by default); a longer run sets it
higher."""
from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backends.engine import cms
from backends.engine.onboarding import ownership, voucher
from backends.engine.errors import EngineError
from backends.engine.onboarding.identity import MANUFACTURING_ROOT, MASA_ROOT, issue_idevid, make_root_ca
from trustplane import lab_artifacts as lab

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
SERIAL = "FOC2231X0AB"
EXAMPLES = int(os.environ.get("TRUSTPLANE_FUZZ_EXAMPLES", "150"))
BUDGET = settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _pki():
    root_key, root = make_root_ca(NOW - timedelta(days=30), MASA_ROOT)
    masa_key, masa = lab.make_masa(root_key, root, NOW - timedelta(days=30))
    maker_key, maker = make_root_ca(NOW - timedelta(days=30), MANUFACTURING_ROOT)
    _id_key, idevid = issue_idevid(maker_key, maker, SERIAL, "8201-32FH", NOW - timedelta(days=30))
    _pdc_key, pdc = lab.make_owner_ca(NOW - timedelta(days=30))
    return root, masa_key, masa, maker, idevid, pdc


ROOT_CA, MASA_KEY, MASA, MAKER, IDEVID, PDC = _pki()
PDC_B64 = base64.b64encode(PDC.public_bytes(serialization.Encoding.DER)).decode()


def voucher_json(members: dict) -> bytes:
    body = {"serial-number": SERIAL, "created-on": "2026-05-01T10:00:00Z", "assertion": "logged",
            "pinned-domain-cert": PDC_B64, **members}
    return json.dumps({voucher.VOUCHER_KEY: body}).encode()


GOOD = cms.sign(voucher_json({}), MASA_KEY, MASA, chain=[ROOT_CA])
BUNDLE = lab.bundle([("a.vcj", GOOD), ("b.vcj", cms.sign(voucher_json({"serial-number": "OTHER1"}), MASA_KEY,
                                                          MASA, chain=[ROOT_CA]))])
TAR = io.BytesIO()
with tarfile.open(fileobj=TAR, mode="w") as _tar:
    _info = tarfile.TarInfo("a.vcj")
    _info.size = len(GOOD)
    _tar.addfile(_info, io.BytesIO(GOOD))
TAR = TAR.getvalue()


@st.composite
def mutated(draw, base: bytes):
    """base with a few bytes changed, cut, or inserted."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "cut", "insert", "overwrite")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
    return bytes(data)


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                      st.text(max_size=40), st.sampled_from(["2026-05-01T10:00:00Z", "9999-12-31T23:59:59-01:00",
                                                             "0001-01-01T00:00:00+01:00", PDC_B64, "AAECAw",
                                                             "00112233445566778899aabbccddeeff"]))
JSON_VALUE = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12), inner, max_size=4), max_leaves=12)
MEMBER_NAMES = st.sampled_from(["serial-number", "created-on", "expires-on", "assertion", "pinned-domain-cert",
                                "nonce", "idevid-issuer", "domain-cert-revocation-checks", "last-renewal-date",
                                voucher.PROFILE_MEMBER, "XMLName"])
VOUCHER_TEXT = st.one_of(
    st.dictionaries(MEMBER_NAMES, JSON_VALUE, max_size=8).map(voucher_json),
    st.builds(lambda text, raw: text + raw, st.dictionaries(MEMBER_NAMES, JSON_VALUE, max_size=8).map(voucher_json),
              st.sampled_from([b"", b"]", b"{", b" NaN", b"\xff", b"\x00"])),
    mutated(voucher_json({})),
    st.binary(max_size=256),
)


def only_typed_errors(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except EngineError as exc:
        assert exc.code and exc.message, exc


@BUDGET
@given(VOUCHER_TEXT)
def test_voucher_json_reader(content):
    only_typed_errors(voucher.parse, content)


@BUDGET
@given(st.one_of(mutated(GOOD), st.binary(max_size=512), mutated(base64.b64encode(GOOD)),
                 st.builds(lambda body: b"-----BEGIN CMS-----\n" + body + b"\n-----END CMS-----\n",
                           st.binary(max_size=64))))
def test_cms_reader(data):
    only_typed_errors(cms.load, data)


@BUDGET
@given(st.one_of(mutated(GOOD), VOUCHER_TEXT.map(lambda content: cms.sign(content, MASA_KEY, MASA,
                                                                         chain=[ROOT_CA]))))
def test_voucher_verification(data):
    only_typed_errors(voucher.verify, data, anchors=[ROOT_CA], serial=SERIAL, at=NOW, idevid=IDEVID,
                      device_anchors=[MAKER])


def _select(data: bytes):
    ownership.select(ownership.read_bundle(data, "fuzz"), {SERIAL}, anchors=[ROOT_CA], at=NOW,
                     idevids={SERIAL: IDEVID}, device_anchors=[MAKER])


@BUDGET
@given(st.one_of(mutated(BUNDLE), mutated(TAR), st.binary(max_size=1024),
                 st.builds(lambda magic, rest: magic + rest,
                           st.sampled_from([b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"0"]),
                           st.binary(max_size=512))))
def test_bundle_reader(data):
    only_typed_errors(_select, data)


@pytest.mark.parametrize("data", [GOOD, BUNDLE, TAR])
def test_the_seeds_are_accepted(data):
    sel = ownership.select(ownership.read_bundle(data, "seed"), {SERIAL}, anchors=[ROOT_CA], at=NOW,
                           idevids={SERIAL: IDEVID}, device_anchors=[MAKER])
    assert SERIAL in sel.chosen and not sel.rejected
