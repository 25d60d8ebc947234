"""The README's embedding example runs as written."""

import re

from conftest import ROOT


def test_readme_embedding_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Embedding the engine", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("> You look around.\n")
    assert (tmp_path / "my-game.json").exists()
