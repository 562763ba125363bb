"""The hub client boundary: every call QwenTune makes to Hugging Face or ModelScope goes through here.

Both clients are imported lazily, inside the functions, so importing this module costs nothing and
tests can replace ``huggingface_hub.snapshot_download``, ``huggingface_hub.HfApi.model_info``,
``modelscope_hub.HubApi.list_repo_files`` and ``modelscope_hub.HubApi.download_repo``.

Tokens are never read or passed by QwenTune: each client finds its own (``HF_TOKEN`` or
``huggingface-cli login``'s file; ``MODELSCOPE_API_TOKEN`` or ``modelscope login``'s file), so a
token cannot end up in a run folder, a log line or a subprocess's command line.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from core.choices import HUBS
from core.models.errors import (
    DownloadFailed,
    HubUnreachable,
    MissingPackage,
    ModelError,
    RepoGated,
    RepoNotFound,
)

HUB_NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope"}
DEFAULT_ENDPOINTS = {"hf": "https://huggingface.co", "modelscope": "https://modelscope.cn"}
HF_MIRROR = "https://hf-mirror.com"
MODELSCOPE_PIN = "modelscope==1.40.2"

# Seconds before a silent hub counts as unreachable. The probe (core.net) answers in well under a
# second when DNS or the route fails; the metadata call is bounded as a whole, because ModelScope's
# client retries a failed listing for up to half a minute on its own.
PROBE_TIMEOUT_S = 8.0
METADATA_TIMEOUT_S = 60.0
# Client timeouts, applied only where the user did not set them: HF's default 10 s read timeout
# aborts large files on slow links, and ModelScope's default API timeout is a minute per try.
CLIENT_TIMEOUT_ENV = {
    "HF_HUB_ETAG_TIMEOUT": "20",
    "HF_HUB_DOWNLOAD_TIMEOUT": "60",
    "MODELSCOPE_API_CONNECT_TIMEOUT": "10",
    "MODELSCOPE_API_TIMEOUT": "30",
    "MODELSCOPE_API_MAX_RETRIES": "2",
    "MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS": "2",
}


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    hub: str
    revision: str
    files: tuple[RepoFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def check_hub(hub: str) -> str:
    if hub not in HUBS:
        raise ModelError(f"unknown hub {hub!r}; choose one of {list(HUBS)}", where="model.hub")
    return hub


def other_hub(hub: str) -> str:
    return "modelscope" if hub == "hf" else "hf"


def endpoint(hub: str) -> str:
    """The hub's base URL, honouring HF_ENDPOINT (e.g. a mirror) and MODELSCOPE_ENDPOINT."""
    var = "HF_ENDPOINT" if hub == "hf" else "MODELSCOPE_ENDPOINT"
    url = os.environ.get(var, "").strip() or DEFAULT_ENDPOINTS[hub]
    if not url.lower().startswith(("http://", "https://")):
        url = "https://" + url
    return url.rstrip("/")


def repo_url(repo_id: str, hub: str) -> str:
    if hub == "hf":
        return f"{endpoint('hf')}/{repo_id}"
    return f"{endpoint('modelscope')}/models/{repo_id}"


def token_source(hub: str) -> str | None:
    """Where the hub client will find a token, described in words; never the token itself."""
    if hub == "hf":
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            if os.environ.get(var, "").strip():
                return f"the {var} environment variable"
        hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
        path = Path(os.environ.get("HF_TOKEN_PATH") or hf_home / "token")
        return f"the login file {path}" if path.is_file() else None
    if os.environ.get("MODELSCOPE_API_TOKEN", "").strip():
        return "the MODELSCOPE_API_TOKEN environment variable"
    home = Path(os.environ.get("MODELSCOPE_HOME") or Path.home() / ".modelscope")
    path = home / "credentials" / "cookies"
    return f"the login file {path}" if path.is_file() else None


def apply_client_timeouts() -> None:
    """Give both clients finite timeouts (only where the user set none)."""
    for name, value in CLIENT_TIMEOUT_ENV.items():
        os.environ.setdefault(name, value)
    import sys

    # huggingface_hub reads these at import; transformers may have imported it already.
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        for name in ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"):
            if getattr(constants, name, None) == 10:
                setattr(constants, name, int(os.environ[name]))


def offline_mode(hub: str) -> str | None:
    """The environment variable that forbids network access for this hub, if one is set."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if hub == "hf" else ("MODELSCOPE_OFFLINE",)
    for name in names:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def probe(hub: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast with :class:`ConnectionError` when the hub does not answer over HTTP at all
    (core.net.probe, the same check dataset sources use; it goes through HTTPS_PROXY when set)."""
    from core import net

    why = net.probe(endpoint(hub), timeout)
    if why is not None:
        raise ConnectionError(why)


def _bounded(fn, timeout: float, what: str):
    """Run ``fn`` in a daemon thread and give up after ``timeout`` seconds (TimeoutError)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"hub-{what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _modelscope_api():
    """ModelScope's hub client (the ``modelscope_hub`` package that ``modelscope`` installs; it
    downloads without importing torch, unlike ``import modelscope``)."""
    try:
        from modelscope_hub import HubApi
    except ImportError as exc:
        raise MissingPackage(
            f"ModelScope downloads need the 'modelscope' package, which is not installed ({exc}).",
            f"Install it with: pip install {MODELSCOPE_PIN}   (or use --hub hf)",
        ) from None
    return HubApi()


def list_repo_files(repo_id: str, hub: str, timeout: float | None = None) -> RepoListing:
    """Every file of the repository with its size, and the revision they belong to."""
    timeout = METADATA_TIMEOUT_S if timeout is None else timeout
    apply_client_timeouts()
    if hub == "hf":
        import huggingface_hub

        def call():
            info = huggingface_hub.HfApi().model_info(repo_id, files_metadata=True, timeout=min(timeout, 30))
            files = tuple(RepoFile(s.rfilename, int(s.size or 0)) for s in (info.siblings or []))
            return RepoListing(repo_id, hub, str(info.sha or "main"), files)
    else:
        api = _modelscope_api()

        def call():
            raw = api.list_repo_files(repo_id, "model", recursive=True)
            files = tuple(RepoFile(str(f.path), int(f.size or 0)) for f in raw
                          if str(getattr(f, "type", "blob") or "blob").lower() != "tree")
            return RepoListing(repo_id, hub, "master", files)
    return _bounded(call, timeout, "list")


def snapshot(repo_id: str, hub: str, dest: Path, allow: list[str] | None, ignore: list[str] | None,
             revision: str | None = None) -> str:
    """Download (or resume) the repository into ``dest``; files already complete are skipped."""
    apply_client_timeouts()
    if hub == "hf":
        import huggingface_hub
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        # Our own progress report replaces the client's tqdm bars (which would garble CLI lines).
        was_disabled = are_progress_bars_disabled()
        disable_progress_bars()
        try:
            return huggingface_hub.snapshot_download(
                repo_id, local_dir=str(dest), allow_patterns=allow, ignore_patterns=ignore,
                revision=revision if revision and revision != "main" else None,
            )
        finally:
            if not was_disabled:
                enable_progress_bars()
    api = _modelscope_api()
    from modelscope_hub import ProgressCallback

    # The no-op base callback replaces the client's tqdm bars, as for Hugging Face above.
    return str(api.download_repo(repo_id, "model", local_dir=str(dest), allow_patterns=allow,
                                 ignore_patterns=ignore, progress_callbacks=[ProgressCallback]))


# ------------------------------------------------------------------------------- error messages
def _status_code(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
    try:
        return int(code) if code is not None else None
    except (TypeError, ValueError):
        return None


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_connection_error(exc: BaseException) -> bool:
    for e in _chain(exc):
        name = type(e).__name__
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)):
            return True
        if any(word in name for word in ("ConnectError", "ConnectionError", "Timeout", "NetworkError",
                                         "OfflineModeIsEnabled", "ProxyError", "NameResolution")):
            return True
        # huggingface_hub raises this when the network failed and no local copy exists.
        if name == "LocalEntryNotFoundError" and "internet connection" in str(e):
            return True
    return False


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def unreachable_advice(repo_id: str, hub: str, alternative: str) -> str:
    """What to do when ``hub`` is unreachable: the other hub (with its command), the mirror."""
    lines = ["Check the internet connection or proxy (HTTPS_PROXY) and try again; partial files are kept "
             "and the next attempt resumes them."]
    if alternative:
        lines.append(f"Or use {HUB_NAMES[other_hub(hub)]}: {alternative}")
    if hub == "hf":
        lines.append(f"In mainland China Hugging Face also works through a mirror: "
                     f"export HF_ENDPOINT={HF_MIRROR}")
    return "\n".join(lines)


def translate_error(exc: BaseException, repo_id: str, hub: str, alternative: str = "") -> ModelError:
    """Turn a hub client's exception into a ModelError naming the repository and both hubs."""
    if isinstance(exc, ModelError):
        return exc
    name = HUB_NAMES[hub]
    host = urlparse(endpoint(hub)).hostname
    flag = offline_mode(hub)
    if flag:
        return HubUnreachable(f"Offline mode is on ({flag}=1), so {repo_id} cannot be downloaded from {name}.",
                              f"Unset {flag} to download, or choose a model folder that is already on disk.")
    if is_connection_error(exc):
        return HubUnreachable(f"Cannot reach {name} ({host}) to download {repo_id}: {_short(exc)}.",
                              unreachable_advice(repo_id, hub, alternative))
    code = _status_code(exc)
    cls_names = {type(e).__name__ for e in _chain(exc)}
    login = ("huggingface-cli login (or set HF_TOKEN)" if hub == "hf"
             else "modelscope login --token YOUR_TOKEN (or set MODELSCOPE_API_TOKEN)")
    if "GatedRepoError" in cls_names or code == 403 or cls_names & {"AuthenticationError", "PermissionDeniedError"}:
        source = token_source(hub)
        have = f"A token was found in {source}, but it" if source else "No token was found; the repository"
        return RepoGated(f"{repo_id} on {name} needs permission: {_short(exc)}.",
                         f"{have} may lack access. Accept the licence at {repo_url(repo_id, hub)} "
                         f"and log in: {login}.")
    if cls_names & {"RepositoryNotFoundError", "NotExistError", "NotFoundError"} or code in (401, 404):
        advice = (f"Check the spelling at {repo_url(repo_id, hub)}. A private repository also needs a "
                  f"token: {login}.")
        if alternative:
            advice += f"\nIt may exist on {HUB_NAMES[other_hub(hub)]}: {alternative}"
        return RepoNotFound(f"{repo_id} was not found on {name}.", advice)
    return DownloadFailed(f"Downloading {repo_id} from {name} failed: {_short(exc)}",
                          "Run the same command again to resume; files already downloaded are kept.")
