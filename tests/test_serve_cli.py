"""`dungeon serve` from the command line: start-up message, refusals, a real process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from dungeon import saves
from dungeon.cli import main


def test_binding_another_address_without_a_key_is_refused(capsys):
    assert main(["serve", "--model", "fake", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "Traceback" not in err


def test_the_picker_flag_reaches_the_games_options(capsys):
    from dungeon.cli import build_parser
    from dungeon.config import merge, option_flags

    args = build_parser().parse_args(["serve", "--model", "fake", "--picker", "first"])
    assert merge({}, option_flags(args)).picker == "first"
    assert merge({}, option_flags(build_parser().parse_args(["serve"]))).picker == "adherence"
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["serve", "--picker", "best"])
    assert refused.value.code == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_a_short_api_key_is_refused(capsys):
    assert main(["serve", "--model", "fake", "--api-key", "abc"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_the_serve_process_says_where_it_listens_serves_and_stops_on_ctrl_c(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DUNGEON_API_KEY": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dungeon",
            "serve",
            "--model",
            "fake",
            "--port",
            "0",
            "--saves",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = None
        banner = []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            banner.append(line)
            found = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url, "".join(banner)
        for line in proc.stderr:  # the rest of the banner
            banner.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(banner)
        assert "only this machine" in text and "/v1/games" in text and "/api" in text
        with httpx.Client(base_url=url, timeout=30) as c:
            gid = c.post("/v1/games", json={"scenario": "fantasy", "seed": 1}).json()["id"]
            turn = c.post(f"/v1/games/{gid}/turns", json={"text": "look"}).json()["turn"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # the usual exit status after Ctrl-C
        assert "Traceback" not in proc.stderr.read()
        story = saves.load(tmp_path / f"{gid}.json").story
        assert story.turns[-1].response == turn["response"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_command_line_loads_the_web_framework_only_to_serve():
    code = (
        "import sys, dungeon.cli; "
        "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
