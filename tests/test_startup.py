"""Start-up: `--version` and `--help` answer without importing torch, matplotlib or h5py (the
heavy imports happen inside the command that needs them). `python benchmarks/startup.py`
times it; this test checks the mechanism in a fresh interpreter, with no clock involved."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "matplotlib", "h5py", "scipy", "sklearn", "torchvision")

PROBE = """
import json, sys
from cli.app import app
try:
    app(sys.argv[1:], standalone_mode=False)
except SystemExit:
    pass
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["train", "--help"], ["eigs", "--help"],
                                  ["landscape", "--help"], ["inspect", "--help"], ["figures", "landscape", "--help"]])
def test_help_and_version_import_nothing_heavy(args, cli_env):
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert "typer" in loaded and not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert "Usage" in done.stdout or "alignsam-diag" in done.stdout


EVERY_HELP = """
import json, sys
import typer
from cli.app import app
root = typer.main.get_command(app)
names = [[name] for name, c in root.commands.items() if not hasattr(c, "commands")]
names += [[name, sub] for name, c in root.commands.items() if hasattr(c, "commands") for sub in c.commands]
for args in names:
    try:
        app([*args, "--help"], standalone_mode=False)
    except SystemExit:
        pass
print(json.dumps([len(names), sorted({m.split('.')[0] for m in sys.modules})]), file=sys.stderr)
"""


def test_no_command_or_figures_subcommand_imports_anything_heavy_for_help(cli_env):
    done = subprocess.run([sys.executable, "-c", EVERY_HELP], env=cli_env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    count, loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert count >= 19 and not set(loaded) & set(HEAVY), sorted(set(loaded) & set(HEAVY))
