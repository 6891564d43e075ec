"""Where a deployment's model comes from: a path, an HTTP(S) URL or a Hugging Face repo.

Every source ends as a local path the planner reads (runner/gguf_meta.py). The
bytes come from the runner's own premises and never cross the tunnel.

- ``path``: a file or model directory under the runner's model directory.
- ``url``: downloaded into ``<model dir>/.downloads/sha256-<hex>/``, resumed
  with ``Range`` after a dropped connection, verified against the required
  SHA-256 and only then renamed into place, so a file there is a verified one.
- ``hf``: through ``huggingface_hub``, which honours ``HF_ENDPOINT`` (a mirror on
  the premises), ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from outpost.sdk.protocol import MAX_MODEL_BYTES, HfSource, PathSource, UrlSource

__all__ = [
    "FetchPolicy",
    "Progress",
    "SourceError",
    "fetch_hf",
    "fetch_url",
    "resolve_path",
    "url_allowed",
]

#: Told of a download's progress: bytes so far and the total, when known.
Progress = Callable[[int, int | None], None]

_CHUNK = 1024 * 1024
_MAX_REDIRECTS = 5
#: Left free on the model directory's disk beside a download.
_DISK_RESERVE = 256 * 1024 * 1024


class SourceError(RuntimeError):
    """A source that cannot be fetched; the message becomes the replica's ``reason``."""


@dataclass(frozen=True)
class FetchPolicy:
    model_dir: Path
    #: Hosts a plain ``http://`` URL may name besides loopback (a mirror on the premises).
    http_hosts: frozenset[str] = frozenset()
    #: Attempts after a dropped connection; each resumes where the last stopped.
    retries: int = 3
    retry_delay_s: float = 0.5
    timeout_s: float = 30.0
    #: One download per file at a time: two replicas of one model share it.
    locks: dict[str, asyncio.Lock] = field(default_factory=dict, compare=False)

    @property
    def downloads(self) -> Path:
        return self.model_dir / ".downloads"


def resolve_path(policy: FetchPolicy, source: PathSource) -> Path:
    """The model a path source names, which must exist under the model directory.

    The frame already refused absolute paths and ``..``; the lexical check here
    keeps that true whatever the frame parser becomes. Symbolic links an
    operator placed in the model directory are followed: they are the
    operator's choice, and the control plane cannot make one.
    """
    root = policy.model_dir.absolute()
    target = root / source.path
    if os.path.commonpath([root, os.path.normpath(target)]) != str(root):
        raise SourceError(f"{source.path!r} is outside the model directory")
    if source.path.split("/")[0] == ".downloads":
        raise SourceError("the .downloads folder holds URL downloads; deploy them by URL")
    if not target.exists():
        raise SourceError(f"no file or folder {source.path!r} in the runner's model directory")
    return target


def url_allowed(url: str, http_hosts: frozenset[str]) -> str | None:
    """Why ``url`` may not be fetched, or None: HTTPS anywhere, HTTP to loopback or listed hosts.

    The checksum guards integrity either way; the rule keeps model traffic off
    plain HTTP across networks unless the operator names the mirror.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return None
    if parts.scheme != "http" or not host:
        return "only http(s) URLs with a host can be fetched"
    if host in http_hosts or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"plain http to {host} is not allowed: use https, or list the host in "
        "--deploy-http-hosts (OUTPOST_DEPLOY_HTTP_HOSTS)"
    )


def _file_name(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".")[:128]
    return name or "model.gguf"


async def fetch_url(
    policy: FetchPolicy,
    source: UrlSource,
    progress: Progress,
    client: httpx.AsyncClient,
) -> Path:
    """Download ``source`` (resuming a part left by an earlier try), verify it, and return it."""
    if (why := url_allowed(source.url, policy.http_hosts)) is not None:
        raise SourceError(why)
    name = _file_name(source.url)
    if not name.endswith(".gguf"):
        raise SourceError("a URL source must name one .gguf file")
    folder = policy.downloads / f"sha256-{source.sha256}"
    final, part = folder / name, folder / (name + ".part")
    lock = policy.locks.setdefault(str(final), asyncio.Lock())
    async with lock:
        if final.is_file():  # renamed into place only once verified
            size = final.stat().st_size
            progress(size, size)
            return final
        folder.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            try:
                await _download(policy, source.url, part, progress, client)
                break
            except (httpx.TransportError, _Retry) as exc:
                attempt += 1
                if attempt > policy.retries:
                    raise SourceError(f"download failed after {attempt} tries: {exc}") from None
                await asyncio.sleep(policy.retry_delay_s * 2 ** (attempt - 1))
        digest = await asyncio.to_thread(_sha256, part)
        if digest != source.sha256:
            part.unlink(missing_ok=True)  # a wrong file is not resumed either
            raise SourceError(f"checksum mismatch: expected sha256 {source.sha256}, got {digest}")
        await asyncio.to_thread(_fsync, part)
        os.replace(part, final)
        return final


class _Retry(RuntimeError):
    """A server error worth another try (5xx, a short body)."""


async def _download(
    policy: FetchPolicy, url: str, part: Path, progress: Progress, client: httpx.AsyncClient
) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-", "Accept-Encoding": "identity"} if have else {}
    headers.setdefault("Accept-Encoding", "identity")
    async with _open(policy, client, url, headers) as resp:
        if resp.status_code == 416 and have:
            # The part is already whole (or longer than the file): the checksum decides.
            progress(have, have)
            return
        if resp.status_code >= 500:
            raise _Retry(f"HTTP {resp.status_code} from {resp.url.host}")
        if resp.status_code not in (200, 206):
            raise SourceError(f"HTTP {resp.status_code} from {resp.url.host}")
        start, total = _extent(resp, have)
        if total is not None and total > MAX_MODEL_BYTES:
            raise SourceError(f"the file is {total} bytes, over the {MAX_MODEL_BYTES} limit")
        if total is not None:
            free = shutil.disk_usage(part.parent).free
            if total - start > free - _DISK_RESERVE:
                raise SourceError(
                    f"not enough disk for the model: {total - start} bytes to fetch, "
                    f"{free} free in the model directory"
                )
        done = start
        with part.open("r+b" if start else "wb") as out:
            out.seek(start)
            out.truncate()
            progress(done, total)
            async for chunk in resp.aiter_raw(_CHUNK):
                done += len(chunk)
                if done > (total if total is not None else MAX_MODEL_BYTES):
                    raise SourceError("the server sent more bytes than it announced")
                out.write(chunk)
                progress(done, total)
        if total is not None and done < total:
            raise _Retry(f"connection closed at {done} of {total} bytes")


def _extent(resp: httpx.Response, have: int) -> tuple[int, int | None]:
    """Where this response's body starts in the file, and the file's size when known."""
    length = resp.headers.get("Content-Length")
    body = int(length) if length and length.isdigit() else None
    if resp.status_code == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != have:
            raise SourceError("the server answered a resumed download with a wrong range")
        return have, int(m.group(3)) if m.group(3) != "*" else None
    return 0, body  # 200: the whole file again, from the start


class _open:  # noqa: N801 - used as a function: ``async with _open(...) as resp``
    """GET ``url`` following redirects by hand, so every hop passes :func:`url_allowed`."""

    def __init__(
        self, policy: FetchPolicy, client: httpx.AsyncClient, url: str, headers: dict[str, str]
    ) -> None:
        self._args = (policy, client, url, headers)
        self._resp: httpx.Response | None = None

    async def __aenter__(self) -> httpx.Response:
        policy, client, url, headers = self._args
        timeout = httpx.Timeout(policy.timeout_s, connect=min(policy.timeout_s, 10.0))
        for _ in range(_MAX_REDIRECTS + 1):
            if (why := url_allowed(url, policy.http_hosts)) is not None:
                raise SourceError(f"redirected to a URL the runner may not fetch: {why}")
            req = client.build_request("GET", url, headers=headers, timeout=timeout)
            resp = await client.send(req, stream=True, follow_redirects=False)
            if resp.is_redirect and "Location" in resp.headers:
                await resp.aclose()
                url = urljoin(url, resp.headers["Location"])
                continue
            self._resp = resp
            return resp
        raise SourceError(f"more than {_MAX_REDIRECTS} redirects")

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            await self._resp.aclose()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


# --- Hugging Face -------------------------------------------------------------------


async def fetch_hf(source: HfSource, progress: Progress) -> Path:
    """The file (or, for a Hugging Face-format model, the snapshot folder) ``source`` names.

    Runs ``huggingface_hub`` in a thread: its downloads are synchronous. The hub
    client reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and
    ``HF_TOKEN`` from the runner's environment. A download cannot be cancelled
    half way; an undeploy during one waits for it (docs/deployments.md).
    """
    return await asyncio.to_thread(_fetch_hf, source, progress)


def _fetch_hf(source: HfSource, progress: Progress) -> Path:
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    bar = _tqdm_for(progress)
    try:
        filename = source.filename
        if filename is None and not constants.HF_HUB_OFFLINE:
            files = HfApi().list_repo_files(source.repo, revision=source.revision)
            ggufs = [f for f in files if f.endswith(".gguf")]
            if len(ggufs) > 1:
                raise SourceError(
                    f"{source.repo} holds {len(ggufs)} GGUF files; name one as the filename"
                )
            filename = ggufs[0] if ggufs else None
        if filename is not None:
            path = hf_hub_download(source.repo, filename, revision=source.revision, tqdm_class=bar)
            return Path(str(path))
        folder = snapshot_download(source.repo, revision=source.revision, tqdm_class=bar)
        return Path(folder)
    except LocalEntryNotFoundError:
        raise SourceError(
            f"{source.repo} is not in the Hugging Face cache and the hub is offline "
            "(HF_HUB_OFFLINE) or unreachable"
        ) from None
    except (HfHubHTTPError, httpx.HTTPError, OSError, ValueError) as exc:
        raise SourceError(f"Hugging Face download of {source.repo} failed: {exc}") from None


def _tqdm_for(progress: Progress) -> Any:
    """A tqdm class that reports to ``progress`` and prints nothing (rich shows the bar)."""
    # tqdm ships no type information (huggingface_hub installs it), so its class is Any.
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    class _Bar(tqdm):  # type: ignore[misc]  # subclassing Any (tqdm, untyped)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["file"] = io.StringIO()
            kwargs.pop("disable", None)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown: bool | None = super().update(n)
            if self.unit == "B":  # the byte bars, not the "files" bar of a snapshot
                total = int(self.total) if self.total else None
                progress(int(self.n), total)
            return shown

    return _Bar
