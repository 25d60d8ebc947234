"""kill -9 in the middle of a load run: every turn a client was told about is in the saves.

The server runs as a real subprocess (``dungeon serve --model fake``) driven by the players of
scripts/bench_serve.py; it is killed with SIGKILL while turns are in flight, started again on
the same saves folder, and every game is read back over the API and from disk.
"""

from __future__ import annotations

import threading
import time

import httpx
from conftest import load_script

bench = load_script("bench_serve")


def test_kill_9_mid_run_loses_no_committed_turn(tmp_path):
    saves_dir = tmp_path / "saves"
    server = bench.Server(saves_dir, ["--model", "fake"], log_path=tmp_path / "server.log")
    server.start(timeout=60)
    players = [bench.Player(i) for i in range(6)]
    stop = threading.Event()
    try:
        url = server.url
        runner = threading.Thread(
            target=bench.run_players, args=(url, players, 40, 60.0, stop), daemon=True
        )
        runner.start()
        deadline = time.monotonic() + 30
        while sum(len(p.told) for p in players) < 20:  # well into the run
            assert time.monotonic() < deadline, "the load never got going"
            time.sleep(0.01)
        server.kill()  # SIGKILL: no shutdown, no last save
        stop.set()
        runner.join(30)
        assert not runner.is_alive()
    finally:
        server.kill()
    told = sum(len(p.told) for p in players)
    assert told >= 20
    assert any(p.errors for p in players)  # turns were in flight when it died

    server.start(timeout=60)  # the same saves folder
    try:
        assert bench.lost_turns(saves_dir, players) == 0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for p in players:
                game = c.get(f"/v1/games/{p.game}").json()
                saved = [(t["action"], t["response"]) for t in game["turns"]]
                assert saved[: len(p.told)] == p.told
                # At most the one turn in flight when the server died was saved unseen.
                assert len(saved) - len(p.told) <= 1
                # And the game goes on where it was.
                r = c.post(f"/v1/games/{p.game}/turns", json={"text": "I carry on"})
                assert r.status_code == 200, r.text
    finally:
        server.stop()
