"""The CA trust pool (backends.engine.x509.trustpool): bundles made by the openssl CLI, built-in
versus downloaded certificates, and the automatic update schedule with a pinned clock."""
from __future__ import annotations

import itertools
import logging
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from backends.engine import cms
from backends.engine.x509 import trustpool
from backends.engine.errors import EngineError
from backends.engine.x509.trustpool import (
    TrustpoolError, active, earliest_expiry, inactive, next_update, parse_bundle, system_bundle,
    update_schedule_points)
from openssl_ca import lazily_broken

DAY, HOUR = timedelta(days=1), timedelta(hours=1)
# The seed's "Cisco Root CA 2048" Validity End.
EXPIRY = datetime(2029, 5, 14, 20, 25, 42, tzinfo=timezone.utc)


def openssl(*args: str, cwd: Path) -> bytes:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def self_signed(base: Path, name: str, subject: str, days: int = 3650) -> Path:
    pem = base / f"{name}.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(base / f"{name}.key"), "-out", str(pem), "-subj", subject, "-days", str(days),
            "-addext", "basicConstraints=critical,CA:TRUE", cwd=base)
    return pem


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    base = tmp_path_factory.mktemp("pool")
    pems = [self_signed(base, n, f"/O=Cisco/CN=Cisco Root CA {n}", days=d)
            for n, d in (("A", 3000), ("B", 1000), ("C", 2000))]
    return base, pems


def load(pem: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.read_bytes())


def refused(data: bytes) -> str:
    with pytest.raises(TrustpoolError) as e:
        parse_bundle(data)
    assert (e.value.code, e.value.tag) == ("trustpool-bundle-invalid", "invalid-value")
    assert isinstance(e.value, EngineError)
    return e.value.message


# --- bundles ---------------------------------------------------------------------------------

def test_concatenated_pem_with_text_and_repeats(cas):
    base, (a, b, c) = cas
    data = (b"Cisco trust pool bundle\n" + a.read_bytes() + b"\n# second\n" + b.read_bytes()
            + a.read_bytes() + b"trailer text\n" + c.read_bytes() + b"the end\n")
    assert parse_bundle(data) == [load(a), load(b), load(c)]


@pytest.mark.parametrize("form", ["DER", "PEM"])
def test_pkcs7_certs_only(cas, form):
    base, (a, b, c) = cas
    out = base / f"bundle.{form}.p7b"
    openssl("crl2pkcs7", "-nocrl", "-certfile", str(a), "-certfile", str(b), "-certfile", str(c),
            "-outform", form, "-out", str(out), cwd=base)
    data = out.read_bytes()
    assert data.startswith(b"-----BEGIN PKCS7-----") == (form == "PEM")
    certs = parse_bundle(data)
    # Same certificates, in the order openssl itself lists them from the bundle.
    listed = openssl("pkcs7", "-inform", form, "-in", str(out), "-print_certs", cwd=base)
    assert certs == x509.load_pem_x509_certificates(listed)
    assert set(certs) == {load(a), load(b), load(c)}


def test_refused_bundles(cas):
    base, (a, b, c) = cas
    assert refused(b"") == "the bundle is empty"
    assert refused(b" \n\t\n") == "the bundle is empty"
    assert refused(b"hello, world") == "the bundle is neither PKCS#7 nor PEM certificates"
    assert refused(b"\x30\x82\x01\x00garbage").startswith("the PKCS#7 bundle cannot be parsed: ")
    assert refused(b"-----BEGIN PKCS7-----\nAAAA\n-----END PKCS7-----\n").startswith(
        "the PKCS#7 bundle cannot be parsed: ")
    good = a.read_bytes()
    assert refused(good + good[:200]) == f"certificate 2 (at byte {len(good)}) has no END line"
    broken = good.replace(good[100:140], b"A" * 40)
    assert refused(good + broken).startswith(f"certificate 2 (at byte {len(good)}) is not a valid X.509 certificate")
    empty_p7 = base / "empty.p7b"
    openssl("crl2pkcs7", "-nocrl", "-outform", "DER", "-out", str(empty_p7), cwd=base)
    assert refused(empty_p7.read_bytes()) == "the bundle holds no certificates"
    assert refused(b"-----BEGIN PKCS7-----\nMAA=\n") == "the PKCS#7 PEM block has no END line"
    assert refused(b"\x30" * (8 * 1024 * 1024 + 1)) == (
        "the bundle is 8388609 bytes, over the 8388608-byte limit")


@pytest.mark.parametrize("how", ["name", "extension"])
def test_certificates_that_fail_when_read_are_refused(cas, how, tmp_path):
    _, (a, _, _) = cas
    good = a.read_bytes()
    bad = lazily_broken(load(a), how).public_bytes(Encoding.PEM)
    assert refused(good + bad).startswith(f"certificate 2 (at byte {len(good)}) is not a valid X.509 certificate: "
                                          "its names or extensions are malformed")
    p7 = cms.certs_only([lazily_broken(load(a), how)])  # openssl itself cannot read such a name
    assert refused(p7).startswith("certificate 1 of the PKCS#7 bundle is not a valid X.509 certificate")
    path = tmp_path / "ca-certificates.crt"
    path.write_bytes(good + bad)
    assert system_bundle(path) == [load(a)]


def test_certificate_count_limit(cas):
    _, (a, _, _) = cas
    one = a.read_bytes()
    assert trustpool.MAX_BUNDLE_CERTS == 1000
    assert parse_bundle(one * 1000) == [load(a)]
    assert refused(one * 1001) == "the bundle holds more than 1000 certificates"


def test_system_bundle_skips_what_cannot_parse(cas, tmp_path, caplog):
    _, (a, b, _) = cas
    good = a.read_bytes()
    broken = good.replace(good[100:140], b"A" * 40)
    path = tmp_path / "ca-certificates.crt"
    path.write_bytes(b"# system\n" + good + broken + b.read_bytes() + good)
    with caplog.at_level(logging.INFO, logger="backends.engine.x509.trustpool"):
        assert system_bundle(path) == [load(a), load(b)]
    assert f"2 built-in certificates from {path} (1 skipped)" in caplog.text
    assert system_bundle(tmp_path / "missing.crt") == []


def test_real_system_bundle_if_present():
    path = Path(trustpool.SYSTEM_BUNDLE)
    if not path.exists():
        pytest.skip("no system CA bundle on this machine")
    certs = system_bundle()
    assert certs and len(set(certs)) == len(certs)


# --- built-in versus downloaded ----------------------------------------------------------------

def test_downloaded_certificate_deactivates_builtin_with_same_subject(cas, tmp_path):
    _, (a, b, c) = cas
    # Re-issued: same subject as A, new key.
    a2 = self_signed(tmp_path, "A2", "/O=Cisco/CN=Cisco Root CA A")
    other = self_signed(tmp_path, "D", "/O=Other/CN=Other Root")
    builtin = [load(a), load(b)]
    downloaded = [load(a2), load(other), load(c)]
    assert load(a2).subject == load(a).subject and load(a2) != load(a)
    assert active(builtin, downloaded) == [load(a2), load(other), load(c), load(b)]
    assert inactive(builtin, downloaded) == [load(a)]
    # No download: everything built-in is active.
    assert active(builtin, []) == builtin
    assert inactive(builtin, []) == []
    # A downloaded copy of a built-in one is listed once.
    assert active(builtin, [load(b)]) == [load(b), load(a)]
    assert earliest_expiry(active(builtin, downloaded)) == load(b).not_valid_after_utc
    assert earliest_expiry([]) is None


# --- automatic update schedule -----------------------------------------------------------------

def test_schedule_points():
    points = list(itertools.islice(update_schedule_points(EXPIRY), 12))
    assert points == [EXPIRY - d * DAY for d in (20, 15, 10, 5, 4, 3, 2, 1)] + [
        EXPIRY - DAY + h * HOUR for h in (1, 2, 3, 4)]


def test_next_update_follows_the_schedule():
    now = EXPIRY - 30 * DAY
    assert next_update(EXPIRY, now, None) == EXPIRY - 20 * DAY
    # Not attempted yet and already inside the window: due now.
    late = EXPIRY - 12 * DAY
    assert next_update(EXPIRY, late, None) == late
    assert next_update(EXPIRY, now, EXPIRY - 20 * DAY) == EXPIRY - 15 * DAY
    assert next_update(EXPIRY, now, EXPIRY - 17 * DAY) == EXPIRY - 15 * DAY
    assert next_update(EXPIRY, now, EXPIRY - 2 * DAY) == EXPIRY - DAY
    assert next_update(EXPIRY, now, EXPIRY - DAY) == EXPIRY - DAY + HOUR
    assert next_update(EXPIRY, now, EXPIRY - DAY + 30 * timedelta(minutes=1)) == EXPIRY - DAY + HOUR
    # Hourly on after the expiry itself, computed directly however many attempts failed.
    far = EXPIRY + 400 * DAY + 5 * HOUR + timedelta(minutes=10)
    assert next_update(EXPIRY, EXPIRY - 30 * DAY, far) == EXPIRY + 400 * DAY + 6 * HOUR
    # A missed point is due at once.
    assert next_update(EXPIRY, EXPIRY + 3 * HOUR, EXPIRY - 5 * DAY) == EXPIRY + 3 * HOUR


def test_next_update_agrees_with_the_points_over_a_pinned_clock():
    """Walk a clock hour by hour from 25 days before expiry to 2 days after it: every attempt
    happens at the first point after the previous one, and nothing is skipped."""
    points = list(itertools.islice(update_schedule_points(EXPIRY), 8 + 24 * 3))
    attempts = []
    last = None
    start = EXPIRY - 25 * DAY
    for h in range(0, 27 * 24 + 1):
        now = start + h * HOUR
        due = next_update(EXPIRY, now, last)
        if due <= now:
            attempts.append(due)
            last = due
    # The clock starts at :25:42 past the hour, like EXPIRY, so each attempt lands on a point.
    assert attempts == [p for p in points if p <= start + 27 * 24 * HOUR]
