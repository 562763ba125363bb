"""Rules for starting the web server: safe by default, refuse unsafe exposure with a clear reason."""

from __future__ import annotations

import ipaddress


class UnsafeLaunch(ValueError):
    pass


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if not auth:
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user or not password:
        raise UnsafeLaunch("--auth must look like user:password (both parts non-empty)")
    return user, password


def check_launch(host: str, share: bool, auth: str | None) -> tuple[str, str] | None:
    """Return the credentials to use; refuse exposure beyond this machine without --auth."""
    creds = parse_auth(auth)
    if creds is None and (share or not is_loopback(host)):
        where = "a public Gradio share link" if share else f"host {host}"
        raise UnsafeLaunch(
            f"refusing to serve on {where} without a password: anyone who can reach it could run "
            "training jobs and read your data. Add --auth user:password, or use --host 127.0.0.1."
        )
    return creds


def gpu_present() -> bool:
    """True when NVML reports at least one NVIDIA GPU. Any NVML failure means no GPU."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError (no driver) or OSError (no library): both mean "no usable GPU"
        return False
    try:
        return pynvml.nvmlDeviceGetCount() > 0
    finally:
        pynvml.nvmlShutdown()

