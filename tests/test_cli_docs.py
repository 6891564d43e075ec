"""Every ``control-plane ...`` and ``runner ...`` command the docs show exists (issue 26).

The commands are parsed out of docs/*.md and README.md (code blocks, and inline code that
starts with the program's name) and walked through the Typer apps' own command tree; each
one found is then asked for ``--help`` through typer's CliRunner, so a command that exists
but cannot even start its help fails too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from outpost.control_plane.cli import app as control_plane_app
from outpost.runner.cli import app as runner_app

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("**/*.md")) + [ROOT / "README.md"]
APPS: dict[str, typer.Typer] = {"control-plane": control_plane_app, "runner": runner_app}
# Code blocks, with their language: a shell's or none (the docs mostly leave it out) count.
_FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```", re.M | re.S)
_SHELLS = {"", "sh", "bash", "console", "shell"}
_INLINE = re.compile(r"`((?:control-plane|runner) [^`\n]+)`")
# A program name at the start of a shell line, or after a prompt, sudo, env assignments,
# `docker compose exec SERVICE`, `kubectl exec ... --`, `&&`, `|` or `$(`.
_AT_LINE = re.compile(
    r"(?:^|&&|\|\||\||;|\$\(|\bexec\s+\S+\s+|\s--\s)\s*(?:\$\s+)?(?:sudo\s+)?"
    # One space after the name: a diagram's column ("runner     control plane") is no command.
    r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:\S*/)?(control-plane|runner) (?! )([^\n|;&)#]*)"
)


def _commands(text: str) -> set[tuple[str, ...]]:
    found: set[tuple[str, ...]] = set()
    for lang, block in _FENCE.findall(text):
        if lang.strip() not in _SHELLS:
            continue
        joined = re.sub(r"\\\n\s*", " ", block)  # continued lines are one command
        for line in joined.splitlines():
            for prog, rest in _AT_LINE.findall(line):
                found.add((prog, *_words(rest)))
    for inline in _INLINE.findall(_FENCE.sub("", text)):
        prog, _, rest = inline.partition(" ")
        found.add((prog, *_words(rest)))
    return found


def _words(rest: str) -> list[str]:
    try:
        return shlex.split(rest, comments=True)
    except ValueError:  # an unbalanced quote in prose: the plain words will do
        return rest.split()


def _documented() -> list[tuple[str, tuple[str, ...]]]:
    return sorted(
        (path.relative_to(ROOT).as_posix(), cmd)
        for path in DOCS
        for cmd in _commands(path.read_text())
    )


def _command_path(cmd: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The subcommand words of ``cmd`` and an error if one names no command."""
    # Typer's groups: whichever click they build on (typer vendors its own), ``commands`` names
    # the subcommands.
    node: Any = typer.main.get_command(APPS[cmd[0]])
    path: list[str] = []
    for word in cmd[1:]:
        commands = getattr(node, "commands", None)
        if commands is None or word.startswith("-") or word.startswith("<"):
            break
        sub = commands.get(word)
        if sub is None:
            if word.isupper() or not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break  # a placeholder or an argument, not a command word
            return path, f"no command {' '.join([cmd[0], *path, word])!r}"
        node, path = sub, [*path, word]
    return path, None


def test_the_docs_show_commands_at_all() -> None:
    """The parser finds the commands people copy (an empty list would pass everything)."""
    found = {cmd[:3] for _, cmd in _documented()}
    assert ("control-plane", "keys", "create") in found
    assert ("runner", "local-runner") in {c[:2] for c in found}


@pytest.mark.parametrize(
    "text",
    [
        "```sh\ncontrol-plane keys erase k1\n```\n",
        "Use `control-plane runners evict run_1` to drop it.\n",
        "```sh\ndocker compose exec control-plane control-plane nosuch\n```\n",
        "```sh\n$ runner local-runnr --control-plane http://cp\n```\n",
    ],
)
def test_an_undocumentable_command_is_caught(text: str) -> None:
    cmds = _commands(text)
    assert cmds
    assert any(_command_path(cmd)[1] is not None for cmd in cmds)


def test_every_documented_command_exists() -> None:
    missing = [
        f"{doc}: {' '.join(cmd)} ({error})"
        for doc, cmd in _documented()
        if (error := _command_path(cmd)[1]) is not None
    ]
    assert not missing, "documented commands that do not exist:\n" + "\n".join(missing)


def test_every_documented_command_answers_help() -> None:
    runner = CliRunner()
    paths = sorted({(cmd[0], *_command_path(cmd)[0]) for _, cmd in _documented()})
    failed = []
    for prog, *words in paths:
        result = runner.invoke(APPS[prog], [*words, "--help"])
        if result.exit_code != 0:
            failed.append(f"{prog} {' '.join(words)}: exit {result.exit_code} {result.output}")
    assert not failed, "\n".join(failed)


def _leaves(node: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    commands = getattr(node, "commands", None)
    if commands is None:
        return [(path, node)]
    return [leaf for name, sub in commands.items() for leaf in _leaves(sub, (*path, name))]


def test_every_listing_takes_json() -> None:
    """Scripts read every ``... list`` the same way: ``--json`` (issue 26)."""
    listings = [
        (path, cmd)
        for prog, app in APPS.items()
        for path, cmd in _leaves(typer.main.get_command(app), (prog,))
        if path[-1] == "list"
    ]
    assert len(listings) >= 5
    bare = [
        " ".join(path)
        for path, cmd in listings
        if not any("--json" in getattr(p, "opts", ()) for p in cmd.params)
    ]
    assert not bare, f"listings without --json: {bare}"
