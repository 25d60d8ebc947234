"""The README's JavaScript client plays a turn against a real server, as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT
from serve_helpers import running_server

from dungeon import saves
from dungeon.generator import FakeGenerator


@pytest.mark.skipif(shutil.which("node") is None, reason="no node here")
def test_the_readme_javascript_client_plays_a_turn(tmp_path):
    section = (ROOT / "README.md").read_text().split("## Serve", 1)[1]
    code = re.search(r"```js\n(.*?)```", section, re.DOTALL).group(1)
    script = tmp_path / "play.mjs"
    script.write_text(code)
    with running_server(FakeGenerator(), saves=tmp_path / "saves") as server:
        env = {**os.environ, "DUNGEON_URL": server.url}
        env.pop("DUNGEON_API_KEY", None)
        out = subprocess.run(
            ["node", str(script)], env=env, capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 0, out.stderr
    assert "> You light the lantern." in out.stdout
    game_id = re.search(r"saved as ([\w.-]+);", out.stdout).group(1)
    story = saves.load(tmp_path / "saves" / f"{game_id}.json").story
    assert story.turns[0].response in out.stdout
