"""The README's Python API example runs as written (in a fresh folder)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert 0.0 <= float(printed[0]) <= 1.0  # the test accuracy of the run
    assert (tmp_path / "runs" / "notebook" / "last.pt").is_file()
    assert float(printed[2]) >= 0.0  # a worst-case loss increase is never negative (δ = 0 is in the ball)
