"""What the registries hold is what the README and ``--help`` show: the optimizer table (names,
hyper-parameters, defaults) is the registry's own description rendered, the data set and model
tables name exactly the registered ones, and ``train``'s hyper-parameter flags, their help and
their validation come from the variants' descriptions. Adding a variant, data set or
architecture fails here until the docs show it (the message prints the expected table)."""

import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Optional

import pytest
import typer

from alignsam_diag.data.sources import SOURCES, usages
from alignsam_diag.models import MODELS
from alignsam_diag.optim import OPTIMIZERS
from alignsam_diag.optim.variants import takers
import cli.train
from cli.app import app
from conftest import error_line, invoke

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def table_after(heading: str) -> list[str]:
    """The lines of the first Markdown table after the line ``heading``."""
    lines = README[README.index(f"\n{heading}\n"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def first_column(heading: str) -> list[str]:
    """The names in the first column of a table: every `name` in its cells, up to a ':' or '['."""
    cells = [row.split("|")[1] for row in table_after(heading)[2:]]
    return [re.split(r"[:\[]", name)[0] for cell in cells for name in re.findall(r"`([^`]+)`", cell)]


def optimizer_table() -> list[str]:
    """The README's optimizer table as the registry describes the variants."""
    rows = ["| name | what it is | hyper-parameters (defaults) |", "|---|---|---|"]
    for name in OPTIMIZERS:
        variant = OPTIMIZERS.get(name)
        flags = " ".join(h.shown_default if h.kind is bool else f"{h.flag} {h.shown_default}" for h in variant.hyper)
        cells = [f"`{flags}`"] if flags else ["—"]
        if variant.needs_aux:
            cells.append(r"`--aux-batch-size` (default \|B^t\|/4)")
        rows.append(f"| `{name}` | {variant.summary.replace('|', chr(92) + '|')} | {', '.join(cells)} |")
    return rows


def test_readme_optimizer_table_is_the_registrys_description():
    expected = optimizer_table()
    assert table_after("### Optimizers (`--optimizer`)") == expected, "README should hold:\n" + "\n".join(expected)


def test_readme_names_every_registered_data_set_and_model_and_no_other():
    assert sorted(first_column("### Data sets (`--dataset`)")) == SOURCES.names()
    assert sorted(first_column("### Models (`--arch`)")) == MODELS.names()


def options(command: str) -> dict[str, typing.Any]:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


@pytest.mark.parametrize("command", ["train", "inspect", "eigs", "landscape"])
def test_help_names_the_registered_data_sets_and_architectures(command):
    found = options(command)
    for usage in usages():
        assert usage in found["dataset"].help, (command, usage)
    for name in [*MODELS.names(), "timm:NAME", "package.module:factory"]:
        assert name in found["arch"].help, (command, name)


def test_train_has_one_flag_per_hyperparameter_of_the_registry_with_each_variants_default():
    found, signature = options("train"), inspect.signature(cli.train.train)
    assert found["optimizer"].help.startswith(" | ".join(OPTIMIZERS.names()) + " ")
    for name, described in takers().items():
        option = found[name]
        kinds = {h.kind for _, h in described}
        assert len(kinds) == 1, f"{name} has types {kinds} across variants"
        assert typing.get_args(signature.parameters[name].annotation)[0] == Optional[kinds.pop()]
        assert option.opts == [described[0][1].flag]
        assert option.secondary_opts == ([described[0][1].off_flag] if option.is_bool_flag else [])
        for variant, h in described:
            assert f"{variant.name}" in option.help and f": {h.shown_default}" in option.help, (name, variant.name)


def test_every_variant_names_its_class_and_the_class_its_description():
    for name in OPTIMIZERS:
        variant = OPTIMIZERS.get(name)
        assert variant.load().variant is variant, name


@pytest.mark.parametrize("args,message", [
    (["--optimizer", "sam", "--lam", "2"], "error: sam does not take --lam; its hyper-parameters are: --rho."),
    (["--optimizer", "looksam", "--k", "0"], "error: --k 0: must be at least 1."),
    (["--optimizer", "gsam", "--alpha", "1.5"], "error: --alpha 1.5: must be in [0.0, 1.0]."),
    (["--optimizer", "lookbehind-sam", "--adaptive-alpha", "--theta", "0.5"],
     "error: lookbehind-sam does not take --theta; its hyper-parameters are: --rho, --k, --alpha, --adaptive-alpha."),
])
def test_hyperparameter_flags_are_checked_against_the_description_before_any_data_is_read(tmp_path, args, message):
    missing = f"npz:{tmp_path / 'none.npz'}"  # reading it would be a different error
    assert error_line(invoke("train", "--dataset", missing, *args, "--out", tmp_path / "run")) == message
    assert not (tmp_path / "run").exists()


def test_the_descriptions_load_without_torch():
    probe = ("import sys; import alignsam_diag.optim.variants, alignsam_diag.models.registry; "
             "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


TOY = """
from alignsam_diag.optim.variants import OPTIMIZERS, Hyper, Variant
OPTIMIZERS.register("toy-sam")(Variant("toy-sam", "a toy", (Hyper("beta", 0.3, "the toy's beta", low=0.0),), "sam:SAM"))
from typer.testing import CliRunner
from cli.app import app
print(CliRunner().invoke(app, ["train", "--help"], terminal_width=200, env={"COLUMNS": "200"}).stdout)
"""


def test_a_newly_described_variant_gets_its_flags_without_a_cli_edit(cli_env):
    shown = subprocess.run([sys.executable, "-c", TOY], env=cli_env, capture_output=True, text=True, check=True).stdout
    assert "--beta" in shown and "The toy's beta — toy-sam: 0.3." in shown and "toy-sam" in shown
