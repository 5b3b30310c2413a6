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
