"""A real terminal session in tmux: `python -m dungeon play` with the fake model.

Slow (it starts a Python process in a real pseudo-terminal and polls the screen); run with
``pytest -m slow tests/test_tmux.py``. Skipped where tmux is not installed
(``apt-get install -y tmux``). The tmux server runs on its own socket, so it never touches
the user's sessions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dungeon import saves
from dungeon.paths import data_dir
from dungeon.session import list_saves, saves_dir

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


class Tmux:
    def __init__(self, socket: str):
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "game")

    def wait_for(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen}")
            time.sleep(0.1)

    def send(self, *keys: str) -> None:
        self("send-keys", "-t", "game", *keys)


@pytest.fixture
def tmux():
    t = Tmux(f"dungeon-test-{os.getpid()}")
    yield t
    subprocess.run(["tmux", "-L", t.socket, "kill-server"], capture_output=True)


def test_a_real_session_in_tmux(tmux):
    env = {
        "DUNGEON_DATA_DIR": str(data_dir()),
        "DUNGEON_CONFIG_DIR": os.environ["DUNGEON_CONFIG_DIR"],
        "TERM": "xterm-256color",
    }
    play = [sys.executable, "-m", "dungeon", "play", "--scenario", "fantasy", "--seed", "3"]
    command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *play, "--model", "fake"])
    command += "; echo EXIT=$?; sleep 60"  # keep the pane open to read the last screen
    tmux("new-session", "-d", "-s", "game", "-x", "90", "-y", "60", "-c", str(ROOT), command)

    tmux.wait_for("Type what you do")
    screen = tmux.wait_for("turn 0")  # the bottom toolbar is drawn just after the prompt
    assert "temp 0.8" in screen and "Type what you do" in screen

    tmux.send("I look around", "Enter")
    screen = tmux.wait_for("turn 1")
    assert "> You look around." in screen

    tmux.send("/help", "Enter")
    screen = tmux.wait_for("Take back the last turn")
    assert "> /help" in screen

    tmux.send("/undo", "Enter")
    tmux.wait_for("Undone: You look around.")

    tmux.send("/quit", "Enter")
    screen = tmux.wait_for("EXIT=")
    assert "EXIT=0" in screen and "Goodbye" in screen
    found = list_saves()
    assert len(found) == 1 and found[0][0].startswith("fantasy-")
    assert saves.load(saves_dir() / f"{found[0][0]}.json").story.turns == []
