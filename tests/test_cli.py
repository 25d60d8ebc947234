"""The ``dungeon`` command line: ``python -m dungeon`` from a pipe, help and usage errors."""

import subprocess
import sys

import pytest

from dungeon.cli import main


@pytest.fixture
def premise(tmp_path):
    path = tmp_path / "premise.txt"
    path.write_text("You stand at the edge of a dark forest with a lantern.\n")
    return path


def test_python_dash_m_dungeon_plays_from_a_pipe(premise, tmp_path):
    env = {"DUNGEON_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dungeon",
            "play",
            "--model",
            "fake",
            "--premise",
            str(premise),
            "--seed",
            "2",
        ],
        input="look around\n/quit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "> You look around." in result.stdout


def test_cli_help_and_no_command(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["play", "--help"])
    assert "NO_COLOR" in capsys.readouterr().out


def test_play_flags_reach_the_options():
    from dungeon import cli

    args = cli.build_parser().parse_args(
        ["play", "--model", "fake", "--no-state", "--candidates", "3", "--picker", "story"]
    )
    opts = cli._options(args)
    assert (opts.state, opts.candidates, opts.picker) == (False, 3, "story")
    assert cli._options(cli.build_parser().parse_args(["play", "--model", "fake"])).state is True


def test_every_play_flag_reaches_the_options():
    from dungeon import cli

    args = cli.build_parser().parse_args(["play", "--model", "fake", "--allow-pickle"])
    assert cli._options(args).allow_pickle is True
