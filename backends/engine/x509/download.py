"""Bounded HTTP GETs for CRLs and CA bundles: a size cap, a deadline for the whole body, a few
redirects and only to the allowed schemes, and no proxies from the environment, so a fetch
goes where the certificate or the configuration says."""
from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable

from ..errors import EngineError

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


class DownloadError(EngineError):
    pass


def fetch(url: str, *, timeout: float, max_size: int, schemes: tuple[str, ...] = ("http", "https"),
          what: str = "download", code: str = "download-failed",
          error: Callable[[str, str], EngineError] = DownloadError) -> bytes:
    """GET url: at most max_size bytes in about `timeout` seconds. Failures raise
    error(code, message), with messages that name `what` was fetched."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise error(code, f"{url} is not an {' or '.join(schemes)} URL")

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req, fp, code_, msg, headers, newurl):
            if urllib.parse.urlsplit(newurl).scheme.lower() not in schemes:
                raise error(code, f"redirect from {req.full_url} to a non-{'/'.join(schemes)} URL refused")
            return super().redirect_request(req, fp, code_, msg, headers, newurl)

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), Redirects())
    deadline = time.monotonic() + timeout
    try:
        with opener.open(urllib.request.Request(url, headers={"User-Agent": "trustplane"}), timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_size:
                raise error(code, f"{what} at {url} is {length} bytes, over {max_size}")
            chunks, total = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise error(code, f"{what} download from {url} took over {timeout:g} s")
                chunk = resp.read(min(_CHUNK, max_size + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_size:
                    raise error(code, f"{what} at {url} is over {max_size} bytes")
    except urllib.error.HTTPError as e:
        raise error(code, f"{what} download from {url} failed: HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise error(code, f"{what} download from {url} failed: {e.reason}") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise error(code, f"{what} download from {url} failed: {e}") from None
    return b"".join(chunks)
