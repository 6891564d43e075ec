"""Model sources against a real loopback HTTP server: resumed downloads, checksums, the URL rules,
the path rules, and the Hugging Face hub through its own client (a mirror and an offline cache)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from outpost.runner.deployments.sources import (
    FetchPolicy,
    SourceError,
    fetch_url,
    resolve_path,
    url_allowed,
)
from outpost.sdk.protocol import MAX_MODEL_BYTES, PathSource, UrlSource
from tests.deployments.loopback import FileServer, Served

SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob.gguf"
    path.write_bytes(os.urandom(SIZE))
    return path


def policy(tmp_path: Path, **kw: object) -> FetchPolicy:
    return FetchPolicy(tmp_path / "models", retry_delay_s=0.01, **kw)  # type: ignore[arg-type]


async def fetch(pol: FetchPolicy, url: str, sha: str, seen: list | None = None) -> Path:
    progress = seen if seen is not None else []
    async with httpx.AsyncClient() as client:
        return await fetch_url(
            pol, UrlSource(url=url, sha256=sha), lambda d, t: progress.append((d, t)), client
        )


async def test_interrupted_download_resumes_with_range(tmp_path: Path, blob: Path) -> None:
    served = Served(blob, cut_after=1024 * 1024 + 5)
    seen: list[tuple[int, int | None]] = []
    with FileServer(files={"/m/blob.gguf": served}) as server:
        path = await fetch(policy(tmp_path), server.url + "/m/blob.gguf", served.sha256, seen)
    assert path.read_bytes() == blob.read_bytes()
    assert path.parent.name == f"sha256-{served.sha256}"
    gets = [r for r in server.requests if r[0] == "GET"]
    assert len(gets) == 2, server.requests
    assert gets[0][2] is None
    # The second asked only for what the first did not deliver.
    resumed_at = int(gets[1][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1024 * 1024 + 5
    assert seen[-1] == (SIZE, SIZE)
    assert all(d <= t for d, t in seen if t is not None)
    assert not list(path.parent.glob("*.part"))


async def test_part_left_by_a_failed_try_is_resumed_by_the_next_deploy(
    tmp_path: Path, blob: Path
) -> None:
    served = Served(blob, cut_after=2 * 1024 * 1024, cut_times=99)
    pol = FetchPolicy(tmp_path / "models", retries=0)
    with FileServer(files={"/b.gguf": served}) as server:
        with pytest.raises(SourceError, match="download failed after 1 tries"):
            await fetch(pol, server.url + "/b.gguf", served.sha256)
        part = next((tmp_path / "models" / ".downloads").rglob("*.part"))
        kept = part.stat().st_size
        assert 0 < kept < SIZE
        served.cut_after = None
        path = await fetch(pol, server.url + "/b.gguf", served.sha256)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == served.sha256
    assert server.requests[-1] == ("GET", "/b.gguf", f"bytes={kept}-")
    assert not part.exists()


async def test_wrong_checksum_fails_cleanly(tmp_path: Path, blob: Path) -> None:
    served = Served(blob)
    wrong = "0" * 64
    with FileServer(files={"/x.gguf": served}) as server:
        with pytest.raises(SourceError, match=f"checksum mismatch: expected sha256 {wrong}"):
            await fetch(policy(tmp_path), server.url + "/x.gguf", wrong)
    # Nothing is left that a later deploy could take for a verified file, or resume.
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]


async def test_server_without_ranges_restarts_from_zero(tmp_path: Path, blob: Path) -> None:
    served = Served(blob, cut_after=1024 * 1024, ignore_range=True)
    with FileServer(files={"/y.gguf": served}) as server:
        path = await fetch(policy(tmp_path), server.url + "/y.gguf", served.sha256)
    assert path.read_bytes() == blob.read_bytes()


async def test_verified_file_is_not_fetched_again(tmp_path: Path, blob: Path) -> None:
    served = Served(blob)
    with FileServer(files={"/z.gguf": served}) as server:
        first = await fetch(policy(tmp_path), server.url + "/z.gguf", served.sha256)
        second = await fetch(policy(tmp_path), server.url + "/z.gguf", served.sha256)
    assert first == second
    assert [r[0] for r in server.requests] == ["GET"]


async def test_http_errors_and_redirects(tmp_path: Path, blob: Path) -> None:
    gone = Served(blob, status=404)
    ok = Served(blob)
    with FileServer(files={"/gone.gguf": gone, "/ok.gguf": ok}) as server:
        server.redirects["/moved.gguf"] = "/ok.gguf"
        server.redirects["/away.gguf"] = "http://10.255.255.1/x.gguf"
        with pytest.raises(SourceError, match="HTTP 404"):
            await fetch(policy(tmp_path), server.url + "/gone.gguf", gone.sha256)
        assert len([r for r in server.requests if r[1] == "/gone.gguf"]) == 1  # 4xx: no retry
        path = await fetch(policy(tmp_path), server.url + "/moved.gguf", ok.sha256)
        assert path.read_bytes() == blob.read_bytes()
        # Every hop passes the URL rules: a redirect cannot reach a host the runner may not.
        with pytest.raises(SourceError, match="redirected to a URL the runner may not fetch"):
            await fetch(policy(tmp_path), server.url + "/away.gguf", ok.sha256)


async def test_url_must_name_a_gguf(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="one .gguf file"):
        await fetch(policy(tmp_path), "http://127.0.0.1:1/model.bin", "a" * 64)


def test_url_rules() -> None:
    assert url_allowed("https://models.example/a.gguf", frozenset()) is None
    assert url_allowed("http://127.0.0.1:8000/a.gguf", frozenset()) is None
    assert url_allowed("http://[::1]:8000/a.gguf", frozenset()) is None
    assert url_allowed("http://localhost/a.gguf", frozenset()) is None
    assert "plain http to mirror.lan" in (url_allowed("http://mirror.lan/a", frozenset()) or "")
    assert url_allowed("http://mirror.lan/a", frozenset({"mirror.lan"})) is None
    assert url_allowed("file:///etc/passwd", frozenset()) is not None


def test_path_source_stays_in_the_model_dir(tmp_path: Path, blob: Path) -> None:
    models = tmp_path / "models"
    (models / "team").mkdir(parents=True)
    (models / "team" / "m.gguf").symlink_to(blob)  # an operator's link is followed
    pol = FetchPolicy(models)
    assert resolve_path(pol, PathSource(path="team/m.gguf")).read_bytes() == blob.read_bytes()
    with pytest.raises(SourceError, match="no file or folder"):
        resolve_path(pol, PathSource(path="team/other.gguf"))
    with pytest.raises(SourceError, match="URL downloads"):
        resolve_path(pol, PathSource(path=".downloads/x.gguf"))
    # The frame refuses traversal; a source built around the parser is refused here too.
    sneaky = PathSource.model_construct(kind="path", path="../blob.gguf")
    with pytest.raises(SourceError, match="outside the model directory"):
        resolve_path(pol, sneaky)


HF_SCRIPT = """
import asyncio, json, sys
from outpost.runner.deployments.sources import fetch_hf, SourceError
from outpost.sdk.protocol import HfSource
seen = []
try:
    source = HfSource.model_validate_json(sys.argv[1])
    path = asyncio.run(fetch_hf(source, lambda d, t: seen.append((d, t))))
    print(json.dumps({"path": str(path), "seen": seen[-1:] }))
except SourceError as exc:
    print(json.dumps({"error": str(exc)}))
"""


def run_hf(source: dict, env: dict[str, str]) -> dict:
    # huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when imported: a process of its own.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out = subprocess.run(
        [sys.executable, "-c", HF_SCRIPT, json.dumps(source)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hf_through_a_loopback_mirror(tmp_path: Path, blob: Path) -> None:
    commit = "c0ffee" + "0" * 34
    served = Served(blob)
    cache = tmp_path / "hub"
    with FileServer(repos={"acme/smol": (commit, {"smol-q4.gguf": served})}) as mirror:
        got = run_hf(
            {"kind": "hf", "repo": "acme/smol", "revision": "main", "filename": "smol-q4.gguf"},
            {"HF_ENDPOINT": mirror.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1"},
        )
    path = Path(got["path"])
    assert path.read_bytes() == blob.read_bytes()
    assert path.is_relative_to(cache / "models--acme--smol" / "snapshots" / commit)
    assert got["seen"] == [[SIZE, SIZE]]
    assert any("/acme/smol/resolve/main/smol-q4.gguf" in r[1] for r in mirror.requests)


def prepare_cache(cache: Path, repo: str, commit: str, name: str, blob: Path) -> None:
    """A hub cache as huggingface_hub lays it out: blobs, a snapshot link and the ref."""
    root = cache / ("models--" + repo.replace("/", "--"))
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / digest).write_bytes(blob.read_bytes())
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "snapshots" / commit / name).symlink_to(Path("../../blobs") / digest)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_hf_offline_from_a_prepared_cache(tmp_path: Path, blob: Path) -> None:
    commit = "a1" * 20
    cache = tmp_path / "hub"
    prepare_cache(cache, "acme/smol", commit, "smol-q4.gguf", blob)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    named = run_hf({"kind": "hf", "repo": "acme/smol", "filename": "smol-q4.gguf"}, env)
    assert Path(named["path"]).read_bytes() == blob.read_bytes()
    # Without a filename, offline: the cached snapshot, in which the planner finds the one GGUF.
    whole = run_hf({"kind": "hf", "repo": "acme/smol"}, env)
    assert Path(whole["path"]) == cache / "models--acme--smol" / "snapshots" / commit
    missing = run_hf({"kind": "hf", "repo": "acme/other", "filename": "x.gguf"}, env)
    assert "not in the Hugging Face cache" in missing["error"]


async def test_a_size_over_the_disk_or_the_bound_is_refused_before_writing(
    tmp_path: Path, blob: Path
) -> None:
    pol = policy(tmp_path)
    pol.downloads.mkdir(parents=True)
    free = shutil.disk_usage(pol.downloads).free
    huge = Served(blob, announce=free + 1)
    over = Served(blob, announce=MAX_MODEL_BYTES + 1)
    with FileServer(files={"/huge.gguf": huge, "/over.gguf": over}) as server:
        with pytest.raises(SourceError, match="not enough disk for the model"):
            await fetch(pol, server.url + "/huge.gguf", huge.sha256)
        with pytest.raises(SourceError, match="over the 1125899906842624 limit"):
            await fetch(pol, server.url + "/over.gguf", over.sha256)
    assert not [p for p in pol.downloads.rglob("*") if p.is_file()]


def test_hf_unreachable_hub_fails_cleanly(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: the hub is down, nothing is cached.
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env |= {"HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    named = run_hf({"kind": "hf", "repo": "acme/smol", "filename": "smol-q4.gguf"}, env)
    assert "not in the Hugging Face cache" in named["error"]
    listed = run_hf({"kind": "hf", "repo": "acme/smol"}, env)
    assert listed["error"].startswith("Hugging Face download of acme/smol failed")
