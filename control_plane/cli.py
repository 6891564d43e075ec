"""``control-plane``: serve the API and run operator tasks on its database."""

from __future__ import annotations

import collections
import enum
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import Annotated, Any, get_args

import typer
import uvicorn
from pydantic import SecretStr, ValidationError
from pydantic_settings import CliApp, CliSettingsSource
from rich.console import Console
from rich.panel import Panel

from outpost.control_plane.actions import keys as key_actions
from outpost.control_plane.actions import runners as runner_actions
from outpost.control_plane.actions.tenants import parse_residency
from outpost.control_plane.admin import issue_api_key, issue_enrollment_token, update_tenant
from outpost.control_plane.audit import operator_actor
from outpost.control_plane.audit.cli import audit_app
from outpost.control_plane.budgets_cli import budgets_app
from outpost.control_plane.cli_db import run_with_db, run_with_settings, tenant_id_named
from outpost.control_plane.console.cli import users_app
from outpost.control_plane.db.engine import Database
from outpost.control_plane.db.migrate import upgrade_to_head
from outpost.control_plane.deployments.cli import deployments_app
from outpost.control_plane.deployments.embedded import link_embedded_model
from outpost.control_plane.permissions import ROLES, key_role
from outpost.control_plane.pools_cli import pools_app, runners_set
from outpost.control_plane.probes.cli import fairness_app
from outpost.control_plane.quotas_cli import quotas_app
from outpost.control_plane.routing.routing import POLICIES
from outpost.control_plane.settings import Settings
from outpost.control_plane.store.keys import list_api_keys
from outpost.control_plane.store.runners import list_runners
from outpost.control_plane.tls import token_with_pin, uvicorn_ssl_kwargs
from outpost.control_plane.usage_cli import usage_command
from outpost.sdk.heap import freeze_startup_heap
from outpost.sdk.logfmt import configure_logging
from outpost.sdk.protocol import MAX_FRAME_BYTES

app = typer.Typer(help="Outpost control plane.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
runners_app = typer.Typer(help="Runners.", no_args_is_help=True)
tenants_app = typer.Typer(
    help="Tenants: routing policy, residency, fair-share weight.", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(runners_app, name="runners")
app.add_typer(tenants_app, name="tenants")
app.add_typer(audit_app, name="audit")
app.add_typer(fairness_app, name="fairness")
app.add_typer(budgets_app, name="budgets")
app.add_typer(quotas_app, name="quotas")
app.add_typer(users_app, name="users")
app.add_typer(pools_app, name="pools")
app.add_typer(deployments_app, name="deployments")
app.command("usage")(usage_command)
runners_app.command("set")(runners_set)
console = Console(stderr=True)

Tenant = Annotated[str, typer.Option(help="Tenant name (created if missing).")]
# typer needs an Enum; its members come from POLICIES, which mypy cannot read from a dict built
# at run time (it accepts only literal member lists), hence the ignore.
RoutingPolicyOpt = enum.Enum("RoutingPolicyOpt", {p: p for p in POLICIES}, type=str)  # type: ignore[misc]


# `serve` and `up` take every setting as a `--kebab-case` flag, derived from Settings (declared
# once, as the runner's local-runner does); secrets are read from the environment only, so they
# never show in process lists.
SECRET_FLAGS = tuple(
    "--" + name.replace("_", "-")
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *get_args(field.annotation))
)
_FLAGS_FROM_SETTINGS: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _settings_from_args(args: list[str], prog: str) -> Settings:
    """Settings from the command line, then ``OUTPOST_*`` variables, then defaults."""
    for flag in SECRET_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in args):
            env = "OUTPOST_" + flag[2:].upper().replace("-", "_")
            console.print(f"[red]{flag} is not accepted on the command line[/]; set {env} instead.")
            raise typer.Exit(2)
    source: CliSettingsSource[Settings] = CliSettingsSource(
        Settings, cli_prog_name=prog, cli_kebab_case=True, cli_exit_on_error=True
    )
    try:
        return CliApp.run(Settings, cli_args=args, cli_settings_source=source)
    except ValidationError as exc:
        for err in exc.errors():
            flag = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
            message = err["msg"].removeprefix("Value error, ")
            console.print(f"[red]{flag}:[/] {message}", highlight=False)
        raise typer.Exit(2) from None


def _uvicorn_config(settings: Settings) -> uvicorn.Config:
    # Imported here: the app pulls in every route (scipy for probes, the openai and anthropic
    # types for the dialects), seconds of CPU that `keys create` and the other tasks never need.
    from outpost.control_plane.app import create_app

    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # The tunnel contract: bounded frames, no compression, explicit keepalive.
        ws_max_size=MAX_FRAME_BYTES + 1024,
        ws_per_message_deflate=False,
        ws_max_queue=64,
        ws_ping_interval=settings.tunnel_ping_interval_s,
        ws_ping_timeout=settings.tunnel_ping_timeout_s,
        timeout_graceful_shutdown=30,
        server_header=False,
        **uvicorn_ssl_kwargs(settings),
        # JSON logs: uvicorn's loggers propagate to our one handler (sdk/logfmt.py), so its access
        # lines carry the request id too; text keeps uvicorn's own format.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )


@app.command(**_FLAGS_FROM_SETTINGS)
def serve(ctx: typer.Context) -> None:
    """Serve the OpenAI-compatible API and the runner tunnel (every setting is a flag: --help)."""
    settings = _settings_from_args(list(ctx.args), "control-plane serve")
    configure_logging(settings.log_format, settings.log_level, process="control-plane")
    _Server(_uvicorn_config(settings)).run()


class _Server(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's lifespan: database, caches, tunnel hub
        freeze_startup_heap()  # what lives as long as the process leaves the collector's way


@app.command()
def migrate() -> None:
    """Apply database migrations (the server also does this on start)."""
    settings = Settings()
    upgrade_to_head(settings.database_url)
    console.print("[green]database is at the latest revision[/]")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="A label for the key.")],
    tenant: Tenant = "default",
    admin: Annotated[bool, typer.Option(help="The 'admin' role (same as --role admin).")] = False,
    role: Annotated[
        str | None,
        typer.Option(help=f"What the key may administer: {', '.join(ROLES)} (default: none)."),
    ] = None,
    models: Annotated[
        str | None,
        typer.Option(help="Allowed models: names and glob patterns, comma-separated."),
    ] = None,
    rate_limit_rpm: Annotated[
        int | None, typer.Option(min=1, help="Requests per minute (token bucket; 429 beyond).")
    ] = None,
    routing_policy: Annotated[
        RoutingPolicyOpt | None, typer.Option(help="Overrides the tenant's routing policy.")
    ] = None,
) -> None:
    """Create an API key; the secret is printed once, on stdout."""
    policy = routing_policy.value if routing_policy else None
    allow = _split_models(models) if models is not None else None
    key_id, secret = run_with_db(
        lambda db: issue_api_key(
            db,
            tenant,
            name,
            admin,
            rate_limit_rpm=rate_limit_rpm,
            routing_policy=policy,
            role=role,
            allowed_models=allow,
        )
    )
    console.print(f"created API key [bold]{key_id}[/] for tenant {tenant!r}; store the secret now:")
    print(secret)


@tenants_app.command("set")
def tenants_set(
    name: Annotated[str, typer.Argument(help="Tenant name (created if missing).")],
    residency: Annotated[
        str | None,
        typer.Option(help="Runner labels allowed, e.g. '{\"region\": [\"eu\"]}'; '{}' clears."),
    ] = None,
    routing_policy: Annotated[
        RoutingPolicyOpt | None, typer.Option(help="Default routing policy.")
    ] = None,
    weight: Annotated[
        float | None, typer.Option(min=0.001, help="Fair-share weight in the scheduler.")
    ] = None,
) -> None:
    """Change a tenant's routing policy, residency rules or weight; prints the result as JSON."""
    policy = routing_policy.value if routing_policy else None

    async def go(db: Database) -> dict[str, Any]:
        # Parsed in here so a bad value is refused like every other (exit 2, one line on stderr).
        rules = parse_residency(residency) if residency is not None else None
        return await update_tenant(db, name, residency=rules, routing_policy=policy, weight=weight)

    result = run_with_db(go)
    print(json.dumps(result, sort_keys=True))


@runners_app.command("enroll")
def runners_enroll(
    name: Annotated[str, typer.Argument(help="Runner name.")],
    tenant: Tenant = "default",
    pool: Annotated[
        str | None,
        typer.Option(
            help="Pool of the tenant the runner joins (created if missing; default: 'default')."
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help='Residency labels routing obeys, e.g. \'{"site": "lab-1"}\'.')
    ] = None,
) -> None:
    """Create a one-time enrollment token for a runner; printed once, on stdout."""
    try:
        parsed = json.loads(labels) if labels is not None else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--labels is not JSON: {exc}") from None
    if parsed is not None and (
        not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values())
    ):
        raise typer.BadParameter("--labels must be an object of strings")
    settings = Settings()
    token = run_with_db(
        lambda db: issue_enrollment_token(
            db, tenant, name, settings.enrollment_token_ttl_s, pool=pool, labels=parsed
        ),
        settings,
    )
    console.print(
        f"enrollment token for runner {name!r} (valid {settings.enrollment_token_ttl_s}s, one "
        "use). Give it to the runner as OUTPOST_ENROLLMENT_TOKEN or --token-file:"
    )
    print(token_with_pin(token, settings))


JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _emit(rows: list[dict[str, Any]], as_json: bool, columns: tuple[str, ...]) -> None:
    for row in rows:
        print(
            json.dumps(row, sort_keys=True, default=str)
            if as_json
            else "  ".join(f"{c}={row[c]}" if c != columns[0] else str(row[c]) for c in columns)
        )


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default", as_json: JsonOpt = False
) -> None:
    """The tenant's API keys (never their secrets)."""

    async def go(db: Database) -> list[dict[str, Any]]:
        async with db.session() as session:
            rows = await list_api_keys(session, await tenant_id_named(session, tenant))
        return [
            {
                "id": r.id,
                "name": r.name,
                "prefix": r.prefix,
                "scopes": r.scopes,
                "role": key_role(set(r.scopes.split(","))),
                "allowed_models": r.allowed_models,
                "expires_at": r.expires_at,
                "revoked_at": r.revoked_at,
            }
            for r in rows
        ]

    _emit(run_with_db(go), as_json, ("id", "name", "role", "allowed_models", "revoked_at"))


def _split_models(value: str) -> list[str]:
    return [m for m in (p.strip() for p in value.split(",")) if m]


@keys_app.command("models")
def keys_models(
    key_id: Annotated[str, typer.Argument(help="API key id (key_...).")],
    models: Annotated[
        str | None,
        typer.Argument(help="Names and glob patterns, comma-separated ('' allows no model)."),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Lift the list: every model the tenant can reach.")
    ] = False,
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default",
) -> None:
    """Set the models an API key may call (others: 403 model_not_allowed, not in /v1/models)."""
    if (models is None) == (not every):
        raise typer.BadParameter("give the models, or --all to lift the list")
    allow = None if every else _split_models(models or "")

    async def go(db: Database) -> list[str] | None:
        async with db.session() as session:
            key = await key_actions.set_allowed_models(
                session,
                await tenant_id_named(session, tenant),
                key_id,
                allow,
                actor=operator_actor(),
            )
            await session.commit()
            return key.allowed_models

    result = run_with_db(go)
    print(json.dumps({"id": key_id, "allowed_models": result}))


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="API key id (key_...).")],
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default",
) -> None:
    """Revoke an API key; a running server refuses it within OUTPOST_AUTH_CACHE_TTL_S (its auth
    cache)."""

    async def go(db: Database) -> str:
        async with db.session() as session:
            key = await key_actions.revoke_key(
                session, await tenant_id_named(session, tenant), key_id, actor=operator_actor()
            )
            await session.commit()
            return key.name

    name = run_with_db(go)
    console.print(f"revoked API key [bold]{key_id}[/] ({name!r}) of tenant {tenant!r}")


@runners_app.command("list")
def runners_list(
    tenant: Annotated[str, typer.Option(help="Tenant name.")] = "default", as_json: JsonOpt = False
) -> None:
    """The tenant's runners as the database knows them (live state: the console or GET
    /api/runners)."""

    async def go(db: Database) -> list[dict[str, Any]]:
        async with db.session() as session:
            rows = await list_runners(session, await tenant_id_named(session, tenant))
        return [
            {
                "id": r.id,
                "name": r.name,
                "pool_id": r.pool_id,
                "labels": r.labels,
                "revoked_at": r.revoked_at,
            }
            for r in rows
        ]

    _emit(run_with_db(go), as_json, ("id", "name", "pool_id", "revoked_at"))


@runners_app.command("revoke")
def runners_revoke(runner_id: Annotated[str, typer.Argument(help="Runner id (run_...).")]) -> None:
    """Revoke a runner's identity: every later handshake fails.

    Tunnels already open to a running server stay up until they reconnect; revoke through the
    API or the console to drop them at once.
    """

    async def go(db: Database, settings: Settings) -> str:
        async with db.session() as session:
            runner = await runner_actions.revoke(session, None, runner_id, actor=operator_actor())
            await session.commit()
            return runner.name

    name = run_with_settings(go)
    console.print(f"revoked runner [bold]{runner_id}[/] ({name!r})")


@app.command(**_FLAGS_FROM_SETTINGS)
def up(ctx: typer.Context) -> None:
    """Control plane on SQLite plus a local runner serving the embedded SmolLM2 model (--help)."""
    settings = _settings_from_args(list(ctx.args), "control-plane up")
    configure_logging(settings.log_format, "WARNING", process="control-plane")
    upgrade_to_head(settings.database_url)
    runner_state = settings.state_dir / "runner"
    enrolled = (runner_state / "identity.json").exists()
    # Deployable from the console as {"kind": "path", "path": "embedded/<file>.gguf"}.
    link_embedded_model(runner_state / "models")

    async def prepare(db: Database) -> tuple[str, str | None]:
        _, key = await issue_api_key(db, "default", "up", admin=True)
        token = None if enrolled else await issue_enrollment_token(db, "default", "local", 600)
        return key, token

    api_key, token = run_with_db(prepare, settings)
    server = _Server(_uvicorn_config(settings))
    env = {**os.environ}
    if token:
        env["OUTPOST_ENROLLMENT_TOKEN"] = token_with_pin(token, settings)
    from outpost.sdk.process import parent_death_signal

    # uvicorn shuts down on SIGTERM, then raises the signal again under the handler that was in
    # place before it ran. Python's default SIGTERM action would end this process there and then,
    # leaving the runner behind; this one unwinds through the ``finally`` that stops it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # Should this process die without unwinding (SIGKILL, OOM), the kernel sends the runner
    # SIGTERM, and the runner's own engine dies with it the same way (runner/engine_process.py).
    # The preexec_fn only calls prctl and getppid: nothing in the child that could wait on a lock.
    runner_proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outpost.runner.cli",
            "local-runner",
            "--control-plane",
            settings.public_url,
            "--state-dir",
            str(runner_state),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=parent_death_signal(signal.SIGTERM),
    )  # noqa: PLW1509
    watch = _RunnerWatch(runner_proc, server)
    try:
        console.print(
            Panel.fit(_instructions(settings.public_url, api_key), title="Outpost is starting")
        )
        server.run()
    finally:
        watch.stopping = True
        _stop_runner(runner_proc)
    if watch.failed is not None:
        # Serving an empty model list would hide it: say why, and fail.
        console.print(
            f"[red]the local runner stopped (exit code {watch.failed}), so Outpost stopped too."
            "[/] Its last words:\n" + "\n".join(watch.tail),
            highlight=False,
        )
        raise typer.Exit(1)


class _RunnerWatch:
    """Relays the local runner's output and, if the runner ends on its own, stops the server.

    ``failed`` is then the runner's exit code; ``tail`` its last lines (its reason).
    """

    def __init__(self, proc: subprocess.Popen[bytes], server: uvicorn.Server) -> None:
        self.proc, self.server = proc, server
        self.stopping = False
        self.failed: int | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=15)
        threading.Thread(target=self._run, name="runner-watch", daemon=True).start()

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            sys.stderr.buffer.write(raw)
            sys.stderr.buffer.flush()
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.tail.append(line)
        code = self.proc.wait()
        # Ctrl-C or SIGTERM reached both: uvicorn's handler has asked the server to stop first.
        if not self.stopping and not self.server.should_exit:
            self.failed = code or 1
            self.server.should_exit = True


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_runner(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # the runner drains its streams and stops its engine
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()  # its engine dies with it (parent-death signal)
            proc.wait()


def _instructions(url: str, key: str) -> str:
    return (
        f"Base URL:  {url}/v1\nAPI key:   {key}\nModel:     smollm2-135m-instruct\n\n"
        f"curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        '  -d \'{"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": '
        '"Hi"}]}\'\n\n'
        "python -c \"from openai import OpenAI; c = OpenAI(base_url='"
        + url
        + "/v1', api_key='"
        + key
        + "');\n"
        "print(c.chat.completions.create(model='smollm2-135m-instruct',\n"
        "      messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"\n\n"
        "The runner loads the model in a few seconds; Ctrl-C stops both."
    )


if __name__ == "__main__":
    app()
