"""The README's CLI reference, generated from the Typer app so that it cannot drift: every
command and ``figures`` subcommand with its arguments and options (flag, default, help).

    python -m alignsam_diag.cli.reference --write README.md   # regenerate the README section

``tests/test_cli_reference.py`` fails when README.md differs from what this prints.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from typing import Any

import typer

START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# Typer (0.29) vendors click, so parameters and commands are told apart by their attributes
# (``param_type_name``, ``commands``), not by click's classes.


def _default(param: Any) -> str:
    if param.required:
        return ""
    default = param.default
    if param.param_type_name == "option" and param.is_flag:
        if param.secondary_opts:
            return f"`{(param.opts if default else param.secondary_opts)[0]}`"
        return ""
    if default is None or default == () or default == []:
        return ""
    return f"`{default}`"


def _flags(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`" + (" ..." if param.nargs == -1 else "")
    return " / ".join(f"`{flag}`" for flag in [*param.opts, *param.secondary_opts])


def command_section(name: str, command: Any) -> list[str]:
    """One command's entry: a <details> block with its summary and a table of its parameters."""
    summary = _cell((command.help or "").split("\n\n")[0])
    lines = ["<details>", f"<summary><code>alignsam-diag {name}</code> — {summary}</summary>", "",
             "| argument / option | default | meaning |", "|---|---|---|"]
    for param in command.params:
        if param.name == "help":
            continue
        lines.append(f"| {_flags(param)} | {_default(param)} | {_cell(getattr(param, 'help', None) or '')} |")
    return lines + ["", "</details>", ""]


def markdown_reference() -> str:
    """The reference as Markdown, between the README's markers."""
    from .app import app

    lines = [START, ""]
    for name, command in typer.main.get_command(app).commands.items():
        if hasattr(command, "commands"):
            for sub, subcommand in command.commands.items():
                lines += command_section(f"{name} {sub}", subcommand)
        else:
            lines += command_section(name, command)
    return "\n".join(lines + [END])


def replace_section(text: str, reference: str) -> str:
    """``text`` (the README) with its reference section replaced by ``reference``."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"the README has no {START} … {END} section")
    return pattern.sub(lambda _: reference, text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        readme = Path(sys.argv[2])
        readme.write_text(replace_section(readme.read_text(), markdown_reference()))
    else:
        print(markdown_reference())
