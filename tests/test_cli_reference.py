"""The README's CLI reference is what Typer builds: a new option, command or help text that is
not regenerated into README.md (``python -m alignsam_diag.cli.reference --write README.md``)
fails here."""

from pathlib import Path

import typer

from cli.app import app
from cli.reference import END, START, markdown_reference, replace_section

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_holds_the_generated_reference():
    text = README.read_text()
    assert START in text and END in text
    assert replace_section(text, markdown_reference()) == text, (
        "README.md's CLI reference is stale: run python -m alignsam_diag.cli.reference --write README.md")


def test_the_reference_names_every_command_and_option():
    reference = markdown_reference()
    root = typer.main.get_command(app)
    for name, command in root.commands.items():
        commands = command.commands.items() if hasattr(command, "commands") else [("", command)]
        for sub, leaf in commands:
            assert f"<code>alignsam-diag {' '.join(filter(None, [name, sub]))}</code>" in reference
            for param in leaf.params:
                if param.param_type_name == "option" and param.name != "help":
                    assert f"`{param.opts[0]}`" in reference, (name, sub, param.opts)
