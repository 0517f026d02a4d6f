"""Certificate revocation lists fetched from CRL distribution points, cached in memory and on
disk until their nextUpdate.

A CRL is used only after its signature checks out with the issuing CA's key and its issuer
name equals the CA's subject. Not implemented: delta CRLs (refused), indirect CRLs and
issuing-distribution-point scoping.

Times are timezone-aware datetimes given by the caller; nothing here reads the wall clock
(the download deadline uses a monotonic clock).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from . import download
from ..errors import EngineError

log = logging.getLogger(__name__)

CRL_INVALID = "crl-invalid"
CRL_UNAVAILABLE = "crl-unavailable"

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 4 * 1024 * 1024
MAX_MEMORY_ENTRIES = 256
MAX_URL = 2048

Fetch = Callable[[str, float, int], bytes]


class CrlError(EngineError):
    pass


def http_get(url: str, timeout: float, max_size: int) -> bytes:
    """GET an http:// distribution point (see download.fetch for the bounds)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        raise CrlError(CRL_UNAVAILABLE, f"CRL distribution point {url} is not an http URL")
    return download.fetch(url, timeout=timeout, max_size=max_size, schemes=("http",), what="CRL",
                          code=CRL_UNAVAILABLE, error=CrlError)


def parse_crl(data: bytes, origin: str) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes; CrlError(crl-invalid) otherwise."""
    try:
        if data[:1] == b"\x30":
            return x509.load_der_x509_crl(data)
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
    except ValueError as e:
        raise CrlError(CRL_INVALID, f"CRL from {origin} cannot be parsed: {e}") from None
    raise CrlError(CRL_INVALID, f"CRL from {origin} is neither DER nor PEM")


def check_crl(crl: x509.CertificateRevocationList, issuer: x509.Certificate, origin: str) -> None:
    """Raises CrlError(crl-invalid) unless `issuer` issued and signed this complete CRL."""
    if crl.issuer != issuer.subject:
        raise CrlError(CRL_INVALID, f"CRL from {origin} is issued by {crl.issuer.rfc4514_string()}, "
                                    f"not by {issuer.subject.rfc4514_string()}")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    except ValueError as e:
        raise CrlError(CRL_INVALID, f"CRL issuer {issuer.subject.rfc4514_string()} has malformed "
                                    f"extensions: {e}") from None
    if ku is not None and not ku.crl_sign:
        raise CrlError(CRL_INVALID, f"CRL issuer {issuer.subject.rfc4514_string()} lacks the cRLSign key usage")
    try:
        delta = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    except x509.ExtensionNotFound:
        delta = None
    except ValueError as e:
        raise CrlError(CRL_INVALID, f"CRL from {origin} has malformed extensions: {e}") from None
    if delta is not None:
        raise CrlError(CRL_INVALID, f"CRL from {origin} is a delta CRL; a complete CRL is required")
    try:
        ok = crl.is_signature_valid(issuer.public_key())
    except (TypeError, ValueError, UnsupportedAlgorithm):
        ok = False
    if not ok:
        raise CrlError(CRL_INVALID, f"CRL from {origin} has a bad signature for issuer "
                                    f"{issuer.subject.rfc4514_string()}")


@dataclass
class _Entry:
    crl: x509.CertificateRevocationList
    issuer: x509.Certificate        # the CA it was checked against


def _fresh(crl: x509.CertificateRevocationList, now: datetime) -> bool:
    next_update = crl.next_update_utc
    return next_update is not None and now < next_update


class CrlCache:
    """CRLs by distribution-point URL, reused while now < nextUpdate.

    Lookups go memory, then the file in `directory` (named by sha256 of the URL), then the
    network. A CRL without nextUpdate is used once and never cached. Safe to share between
    threads; two threads missing the cache together may both download.
    """

    def __init__(self, directory: Path, fetch: Fetch | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_size: int = DEFAULT_MAX_SIZE):
        self.directory = Path(directory)
        self._fetch = fetch or http_get
        self.timeout = timeout
        self.max_size = max_size
        self._memory: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def path_for(self, url: str) -> Path:
        return self.directory / f"{hashlib.sha256(url.encode()).hexdigest()}.crl"

    def get(self, url: str, issuer: x509.Certificate, now: datetime) -> x509.CertificateRevocationList:
        """The current CRL at `url` for CA `issuer`.

        Raises CrlError: crl-unavailable when it cannot be downloaded or is stale
        (nextUpdate <= now); crl-invalid when it is malformed, mis-signed or not the issuer's.
        """
        if len(url) > MAX_URL:
            raise CrlError(CRL_UNAVAILABLE, f"CRL distribution point URL is over {MAX_URL} characters")
        crl = self._from_memory(url, issuer, now)
        if crl is not None:
            return crl
        crl = self._from_file(url, issuer, now)
        if crl is not None:
            self._remember(url, crl, issuer)
            return crl
        try:
            data = self._fetch(url, self.timeout, self.max_size)
        except CrlError:
            raise
        except Exception as e:      # an injected fetch may raise anything; all mean "no CRL"
            raise CrlError(CRL_UNAVAILABLE, f"CRL download from {url} failed: {e}") from None
        if len(data) > self.max_size:
            raise CrlError(CRL_UNAVAILABLE, f"CRL at {url} is over {self.max_size} bytes")
        crl = parse_crl(data, url)
        check_crl(crl, issuer, url)
        next_update = crl.next_update_utc
        if next_update is not None and next_update <= now:
            raise CrlError(CRL_UNAVAILABLE, f"CRL from {url} is stale: nextUpdate "
                                            f"{next_update.isoformat()} is not after {now.isoformat()}")
        if next_update is not None:
            self._remember(url, crl, issuer)
            self._persist(url, crl)
        return crl

    def _from_memory(self, url, issuer, now):
        with self._lock:
            entry = self._memory.get(url)
            if entry is None:
                return None
            self._memory.move_to_end(url)
        if not _fresh(entry.crl, now):
            return None
        if entry.issuer != issuer:
            try:
                check_crl(entry.crl, issuer, url)
            except CrlError:
                return None     # cached for another CA: download the one for this CA
        return entry.crl

    def _from_file(self, url, issuer, now):
        path = self.path_for(url)
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_size + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("CRL cache file %s unreadable: %s", path, e)
            return None
        if len(data) > self.max_size:
            return None
        try:
            crl = parse_crl(data, str(path))
            check_crl(crl, issuer, str(path))
        except CrlError as e:
            log.warning("CRL cache file %s ignored: %s", path, e.message)
            return None
        return crl if _fresh(crl, now) else None

    def _remember(self, url, crl, issuer):
        with self._lock:
            self._memory[url] = _Entry(crl, issuer)
            self._memory.move_to_end(url)
            while len(self._memory) > MAX_MEMORY_ENTRIES:
                self._memory.popitem(last=False)

    def _persist(self, url, crl):
        """Temp file, fsync, rename, fsync the directory: a crash leaves the old CRL or the new."""
        path = self.path_for(url)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(crl.public_bytes(Encoding.DER))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except FileNotFoundError:
                    pass
                raise
            dfd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            # The CRL checked out and stays in memory; only the copy for restarts is lost.
            log.warning("CRL from %s not saved to %s: %s", url, path, e)
