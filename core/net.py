"""The one network probe: does a hub (any URL) answer over HTTP within a deadline?

Model downloads (core.models.hubs) and dataset sources (core.data.sources) both ask it before
starting a client whose own retries could take minutes offline. A TCP connection alone proves
nothing (some networks accept every connection and then stay silent), so this waits for a real
HTTP answer, through the proxy the environment names (urllib reads HTTPS_PROXY). DNS look-ups can
hang past socket timeouts, so the request runs in a thread that is abandoned at the deadline.
A leaf module: it imports nothing of QwenTune's.
"""

from __future__ import annotations

import threading

HTTP_TIMEOUT_S = 5.0


def http_get(url: str, timeout: float = HTTP_TIMEOUT_S, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET request; status 0 and the reason as body when no answer came in time."""
    import urllib.error
    import urllib.request

    result: dict = {}

    def attempt() -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "qwentune", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                result["answer"] = (resp.status, resp.read(1 << 20))
        except urllib.error.HTTPError as exc:
            result["answer"] = (exc.code, b"")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            result["answer"] = (0, (str(reason) or type(exc).__name__).encode())

    t = threading.Thread(target=attempt, daemon=True, name="http-get")
    t.start()
    t.join(timeout + 1.0)
    return result.get("answer", (0, f"no answer within {timeout:g} s".encode()))


def probe(url: str, timeout: float = HTTP_TIMEOUT_S) -> str | None:
    """None when ``url`` answers over HTTP (any status) within ``timeout``, else the reason."""
    status, body = http_get(url, timeout)
    return None if status else body.decode("utf-8", "replace")
