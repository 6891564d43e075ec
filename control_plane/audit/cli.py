"""``control-plane audit ...``: export, verify, prune, checkpoint, keys."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from sqlalchemy import select

from outpost.control_plane.audit.checkpoints import write_checkpoint
from outpost.control_plane.audit.events import operator_actor
from outpost.control_plane.audit.export import checkpoint_line, export_records, jsonl
from outpost.control_plane.audit.guard import ChainGuard, ChainRefused
from outpost.control_plane.audit.keys import AuditSigner
from outpost.control_plane.audit.prune import prune_before
from outpost.control_plane.audit.rotation import rotate_key
from outpost.control_plane.cli_db import run_with_settings
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.models import AuditCheckpoint, AuditKey, Tenant
from outpost.control_plane.settings import Settings
from outpost.sdk.audit import verify_export
from outpost.sdk.client import Client

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="Tamper-evident audit log: export, verify, prune, keys.", no_args_is_help=True
)
keys_app = typer.Typer(help="The audit signing key.", no_args_is_help=True)
audit_app.add_typer(keys_app, name="keys")
console = Console(stderr=True)
T = TypeVar("T")


def _run(fn: Callable[[Database, Settings], Awaitable[T]]) -> T:
    try:
        return run_with_settings(fn)
    except ChainRefused as refused:
        console.print(f"[red]REFUSED to sign the audit chain:[/red] {refused}")
        raise typer.Exit(2) from None


@audit_app.command("export")
def export(
    out: Annotated[Path | None, typer.Option("--out", help="Write here instead of stdout.")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            help="Only this tenant's events (name or id); others are redacted to their digests."
        ),
    ] = None,
    checkpoint: Annotated[
        bool,
        typer.Option(
            help="Sign the current tip first, so the whole export is covered by a signature."
        ),
    ] = True,
) -> None:
    """Export the audit log as JSONL: keys, anchor, events and signed checkpoints."""

    async def go(db: Database, settings: Settings) -> int:
        async with db.session() as session:
            tenant_id = None
            if tenant is not None:
                row = (
                    (
                        await session.execute(
                            select(Tenant).where((Tenant.name == tenant) | (Tenant.id == tenant))
                        )
                    )
                    .scalars()
                    .first()
                )
                if row is None:
                    raise typer.BadParameter(f"no tenant {tenant!r}", param_hint="--tenant")
                tenant_id = row.id
            signer, guard = AuditSigner.from_settings(settings), ChainGuard.from_settings(settings)
            if checkpoint and await write_checkpoint(session, signer, guard):
                await session.commit()
            # A one-shot command: blocking writes hold up nothing else on this loop.
            stream = open(out, "w", encoding="utf-8") if out else sys.stdout  # noqa: SIM115, ASYNC230
            lines = 0
            try:
                async for record in export_records(session, tenant_id=tenant_id):
                    stream.write(jsonl(record))
                    lines += 1
            finally:
                if out:
                    stream.close()
            return lines

    lines = _run(go)
    console.print(f"exported {lines} lines" + (f" to {out}" if out else ""))


def _public_key(value: str) -> str:
    """A key given inline, or a file holding it (plain text, or JSON with ``public_key``)."""
    path = Path(value)
    if len(value) < 200 and path.is_file():
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("{"):
            return str(json.loads(text)["public_key"])
        return text.split()[0]
    return value.strip()


@audit_app.command("verify")
def verify(
    file: Annotated[
        Path, typer.Argument(help="An export (JSONL) from 'audit export' or 'audit prune'.")
    ],
    public_key: Annotated[
        list[str],
        typer.Option(
            "--public-key",
            help="A trusted audit public key (base64url) or a file holding it; repeatable.",
        ),
    ],
    allow_unsigned_tail: Annotated[
        bool, typer.Option(help="Accept events after the last checkpoint.")
    ] = False,
    kept: Annotated[
        list[Path] | None,
        typer.Option(
            "--kept",
            help="Checkpoints you kept (from 'audit checkpoints', the API or an earlier export, "
            "JSONL); a newer log that lost them fails. Repeatable.",
        ),
    ] = None,
) -> None:
    """Verify an export offline: needs only the file and the public key(s)."""
    kept_lines = [rec for path in kept or [] for rec in _checkpoint_lines(path)]
    with open(file, encoding="utf-8") as f:
        result = verify_export(f, [_public_key(k) for k in public_key], kept_lines)
    if not result.ok:
        where = f"line {result.index}" if result.index is not None else "keys"
        seq = f" (seq {result.seq})" if result.seq is not None else ""
        print(f"FAILED at {where}{seq}: {result.reason}")
        raise typer.Exit(1)
    span = f"seq {result.first_seq}..{result.last_seq}" if result.events else "no events"
    also = f", {result.kept_checkpoints} kept checkpoints match" if kept_lines else ""
    print(
        f"OK: {result.events} events ({span}, {result.redacted} redacted), {result.checkpoints} "
        f"checkpoints, signed through seq {result.last_signed_seq}{also}"
    )
    if result.unsigned_tail:
        print(
            f"WARNING: the last {result.unsigned_tail} events are not covered by a signed "
            "checkpoint"
        )
        if not allow_unsigned_tail:
            raise typer.Exit(1)


def _checkpoint_lines(path: Path) -> list[dict[str, Any]]:
    """The checkpoint and anchor lines of a JSONL file (a saved export or ``audit checkpoints``)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                raise typer.BadParameter(f"{path}:{n}: not JSON", param_hint="--kept") from None
            if isinstance(rec, dict) and rec.get("kind") in ("checkpoint", "anchor"):
                out.append(rec)
    return out


@audit_app.command("checkpoints")
def checkpoints(
    out: Annotated[
        Path | None, typer.Option("--out", help="Append here instead of writing to stdout.")
    ] = None,
    after: Annotated[int, typer.Option(help="Only checkpoints after this seq.")] = 0,
    url: Annotated[
        str | None,
        typer.Option(
            help="Fetch them from this control plane's API with the admin key "
            "in OUTPOST_API_KEY (what a tenant runs) instead of the database."
        ),
    ] = None,
) -> None:
    """Print the signed checkpoints as JSONL, to keep outside the control plane for 'audit
    verify --kept'."""

    async def go(db: Database, settings: Settings) -> list[dict[str, Any]]:
        async with db.session() as session:
            rows = (
                await session.execute(
                    select(AuditCheckpoint)
                    .where(AuditCheckpoint.seq > after)
                    .order_by(AuditCheckpoint.seq)
                )
            ).scalars()
            return [checkpoint_line(r) for r in rows]

    if url is not None:
        with Client(base_url=url) as client:
            lines = client.audit.checkpoints(after=after)
    else:
        lines = _run(go)
    if out is None:
        sys.stdout.write("".join(jsonl(r) for r in lines))
        return
    with open(out, "a", encoding="utf-8") as f:
        f.write("".join(jsonl(r) for r in lines))
    console.print(f"kept {len(lines)} checkpoints in {out}")


@audit_app.command("prune")
def prune(
    before: Annotated[
        str,
        typer.Option(
            help="Prune events older than this ISO 8601 date or time "
            "(naive = UTC), e.g. 2026-01-01."
        ),
    ],
    export: Annotated[
        Path, typer.Option("--export", help="Archive file for the pruned events (must not exist).")
    ],
) -> None:
    """Export then delete old events; the checkpoint at the boundary anchors what remains."""
    if export.exists():
        raise typer.BadParameter(f"{export} exists; choose a new file", param_hint="--export")
    try:
        parsed = datetime.fromisoformat(before)
    except ValueError:
        raise typer.BadParameter(
            f"{before!r} is not an ISO 8601 date or time", param_hint="--before"
        ) from None
    cutoff = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    result = _run(
        lambda db, settings: prune_before(
            db,
            AuditSigner.from_settings(settings),
            cutoff,
            export,
            actor=operator_actor(),
            guard=ChainGuard.from_settings(settings),
        )
    )
    if result.archive is None:
        console.print("nothing to prune")
    else:
        console.print(
            f"pruned {result.pruned} events through seq {result.anchor_seq}; archive: {export}"
        )


@audit_app.command("checkpoint")
def checkpoint_now() -> None:
    """Sign a checkpoint at the current tip now."""

    async def go(db: Database, settings: Settings) -> Any:
        async with db.session() as session:
            row = await write_checkpoint(
                session, AuditSigner.from_settings(settings), ChainGuard.from_settings(settings)
            )
            await session.commit()
            return row

    row = _run(go)
    console.print(f"signed checkpoint at seq {row.seq}" if row else "the tip is already signed")


@keys_app.command("show")
def keys_show() -> None:
    """Print the current audit public key (stdout) and its id (stderr)."""
    key = AuditSigner.from_settings(Settings()).current()
    console.print(f"audit key {key.key_id}")
    print(key.public_key)


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per key.")] = False,
) -> None:
    """Every audit public key this database knows, oldest first."""

    async def go(db: Database, settings: Settings) -> list[AuditKey]:
        async with db.session() as session:
            return list(
                (await session.execute(select(AuditKey).order_by(AuditKey.created_at))).scalars()
            )

    for key in _run(go):
        if as_json:
            row = {
                "key_id": key.key_id,
                "public_key": key.public_key,
                "created_at": str(key.created_at),  # stored as ISO 8601 text
                "prev_key_id": key.prev_key_id,
            }
            print(json.dumps(row))
            continue
        prev = f" (rotated from {key.prev_key_id})" if key.prev_key_id else ""
        print(f"{key.key_id}  {key.public_key}  {key.created_at}{prev}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Replace the audit key; the old public key stays valid for old checkpoints."""
    old, new = _run(
        lambda db, settings: rotate_key(
            db, AuditSigner.from_settings(settings), actor=operator_actor()
        )
    )
    console.print(f"rotated audit key {old.key_id} -> {new.key_id}; new public key:")
    print(new.public_key)
