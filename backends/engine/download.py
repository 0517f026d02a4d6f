"""Bounded HTTP(S) downloads for CRLs, CA bundles and SCEP-free CA fetches: one GET, a
timeout, a size cap, no redirects to other schemes."""
from __future__ import annotations

import urllib.error
import urllib.request

from .errors import EngineError


class DownloadError(EngineError):
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # a bundle or CRL moved elsewhere is a configuration problem to report, not to follow
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, *, timeout: float, max_size: int, schemes: tuple[str, ...] = ("http", "https"),
          code: str = "download-failed") -> bytes:
    scheme = url.partition(":")[0].lower()
    if scheme not in schemes:
        raise DownloadError(code, f"{url}: only {' or '.join(s + '://' for s in schemes)} URLs are fetched",
                            tag="invalid-value")
    try:
        with _opener.open(urllib.request.Request(url, headers={"User-Agent": "trustplane"}), timeout=timeout) as resp:
            data = resp.read(max_size + 1)
    except urllib.error.HTTPError as exc:
        raise DownloadError(code, f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(code, f"{url}: {reason}") from None
    if len(data) > max_size:
        raise DownloadError(code, f"{url}: larger than {max_size} bytes")
    return data
