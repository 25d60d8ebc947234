"""Serving benchmark: N simulated players, each playing a scripted game over HTTP.

    python scripts/bench_serve.py                                  # built-in model, 1, 4, 8 players
    python scripts/bench_serve.py --players 1,4 --turns 3 --max-new-tokens 24
    python scripts/bench_serve.py --model fake --players 8         # the API alone, no model

Starts ``dungeon serve`` as a subprocess on a free loopback port with a fresh saves folder
(loopback only: nothing here talks to another machine), then for each player count runs that
many players at once, each creating a game and playing ``--turns`` scripted turns through the
game API (``POST /v1/games/{id}/turns``). Reports p50/p90/p99 turn latency, turns per second
and errors per player count, then checks that every game's save holds exactly the turns its
client was told about (a lost or changed turn is counted). Prints a table and one JSON line:

    {"players": {"1": {"turns_per_s": ..., "p50_s": ..., "p90_s": ..., "p99_s": ...}, ...},
     "lost_turns": 0, "errors": 0}

Bounded: at most 32 players and 50 turns each, and every run stops starting turns after
``--time-limit`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dungeon import saves  # noqa: E402

MAX_PLAYERS = 32
MAX_TURNS = 50
SCENARIOS = ("fantasy", "mystery", "cyberpunk", "apocalypse")
ACTIONS = (
    "I look around",
    "I walk to the door and listen",
    'say "Is anyone there?"',
    "I search the floor for anything useful",
    "I light my lantern",
    "I follow the footprints",
    "I wait and watch",
    "I open the door",
)


# --- the server -----------------------------------------------------------------------------


class Server:
    """``dungeon serve`` as a subprocess on a free loopback port."""

    def __init__(self, saves_dir: Path, args: list[str], *, log_path: Path):
        self.saves = saves_dir
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 600.0) -> Server:
        cmd = [sys.executable, "-m", "dungeon", "serve", "--port", "0", "--saves", str(self.saves)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd + self.args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
            )
        deadline = time.monotonic() + timeout
        while not self.url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dungeon serve did not start (see {self.log_path})")
            with open(self.log_path, "rb") as log:  # this start's lines only
                log.seek(seen)
                text = log.read().decode(errors="replace")
            found = re.findall(r"on (http://127\.0\.0\.1:\d+)", text)
            if found:
                self.url = found[-1]
            else:
                time.sleep(0.1)
        self._wait_healthy(deadline)
        return self

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("dungeon serve did not answer /health")

    def kill(self) -> None:
        """kill -9: no clean shutdown, no last save."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.url = ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.url = ""


# --- the players ----------------------------------------------------------------------------


@dataclass
class Player:
    """One simulated player: their game, the turns the server told them were committed, and
    how long each took."""

    number: int
    game: str = ""
    told: list[tuple[str, str]] = field(default_factory=list)
    """(action, response) of every turn the server answered 200 to."""
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def play(self, url: str, turns: int, deadline: float, *, stop: threading.Event) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            try:
                if not self.game:
                    body = {
                        "scenario": SCENARIOS[self.number % len(SCENARIOS)],
                        "seed": self.number,
                    }
                    r = c.post("/v1/games", json=body)
                    r.raise_for_status()
                    self.game = r.json()["id"]
                for i in range(turns):
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    action = ACTIONS[(self.number + i) % len(ACTIONS)]
                    self.turn(c, action)
            except httpx.HTTPError as err:
                self.errors.append(f"{type(err).__name__}: {err}")

    def turn(self, c: httpx.Client, action: str) -> None:
        started = time.perf_counter()
        for _attempt in range(5):  # a full queue answers 503: wait as told
            r = c.post(f"/v1/games/{self.game}/turns", json={"text": action})
            if r.status_code != 503:
                break
            time.sleep(float(r.headers.get("Retry-After", "1")))
        if r.status_code != 200:
            self.errors.append(f"{r.status_code}: {r.text[:200]}")
            return
        took = time.perf_counter() - started
        turn = r.json()["turn"]
        self.told.append((turn["action"], turn["response"]))
        self.latencies.append(took)


def run_players(
    url: str, players: list[Player], turns: int, time_limit: float, stop: threading.Event
) -> float:
    """All players at once; returns the wall time."""
    deadline = time.monotonic() + time_limit
    started = time.perf_counter()
    threads = [
        threading.Thread(target=p.play, args=(url, turns, deadline), kwargs={"stop": stop})
        for p in players
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def lost_turns(saves_dir: Path, players: list[Player]) -> int:
    """Turns a client was told about that its game's save does not hold as told."""
    lost = 0
    for p in players:
        if not p.game:
            continue
        saved = saves.load(saves_dir / f"{p.game}.json").story.turns
        for i, (action, response) in enumerate(p.told):
            if i >= len(saved) or (saved[i].action, saved[i].response) != (action, response):
                lost += 1
    return lost


# --- the report -----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(players: list[Player], wall: float) -> dict:
    lat = [x for p in players for x in p.latencies]
    return {
        "turns": len(lat),
        "turns_per_s": round(len(lat) / wall, 3) if wall else 0.0,
        "p50_s": round(statistics.median(lat), 3) if lat else 0.0,
        "p90_s": round(percentile(lat, 0.9), 3),
        "p99_s": round(percentile(lat, 0.99), 3),
        "errors": sum(len(p.errors) for p in players),
        "wall_s": round(wall, 2),
    }


def table(results: dict[str, dict]) -> str:
    head = f"{'players':>7} {'turns':>6} {'turns/s':>8} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} {'errors':>6}"
    rows = [head, "-" * len(head)]
    for n, r in results.items():
        rows.append(
            f"{n:>7} {r['turns']:>6} {r['turns_per_s']:>8.3f} {r['p50_s']:>7.2f} "
            f"{r['p90_s']:>7.2f} {r['p99_s']:>7.2f} {r['errors']:>6}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--players", default="1,4,8", help="player counts to run, e.g. 1,4,8")
    ap.add_argument("--turns", type=int, default=3, help="turns per player (default 3)")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="response length (default 32)")
    ap.add_argument("--model", default=None, help="as for dungeon serve (default: the built-in)")
    ap.add_argument("--batch-size", type=int, default=8, help="dungeon serve --batch-size")
    ap.add_argument("--threads", type=int, default=None, help="dungeon serve --threads")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per player count")
    ap.add_argument("--saves", type=Path, help="saves folder (default: a temporary one)")
    ap.add_argument("--log", type=Path, help="the server's stderr (default: in the saves folder)")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.players.split(",") if x.strip()]
    if not counts or any(not 1 <= n <= MAX_PLAYERS for n in counts):
        ap.error(f"player counts must be between 1 and {MAX_PLAYERS}")
    if not 1 <= args.turns <= MAX_TURNS:
        ap.error(f"--turns must be between 1 and {MAX_TURNS}")

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        saves_dir = args.saves or Path(tmp) / "saves"
        serve_args = [
            "--max-new-tokens", str(args.max_new_tokens),
            "--min-new-tokens", str(min(4, args.max_new_tokens)),
            "--batch-size", str(args.batch_size),
            "--max-queue", str(max(16, 2 * max(counts))),
        ]  # fmt: skip
        if args.model:
            serve_args += ["--model", args.model]
        if args.threads:
            serve_args += ["--threads", str(args.threads)]
        server = Server(saves_dir, serve_args, log_path=args.log or Path(tmp) / "server.log")
        print(f"starting dungeon serve {' '.join(serve_args)} ...", file=sys.stderr)
        server.start()
        results: dict[str, dict] = {}
        everyone: list[Player] = []
        stop = threading.Event()
        try:
            for n in counts:
                players = [Player(len(everyone) + i) for i in range(n)]
                everyone += players
                wall = run_players(server.url, players, args.turns, args.time_limit, stop)
                results[str(n)] = summary(players, wall)
                health = httpx.get(server.url + "/health", timeout=10).json()
                print(f"{n} players: {results[str(n)]}", file=sys.stderr)
                if "batching" in health:  # counters since the server started
                    print(f"  batching so far: {health['batching']}", file=sys.stderr)
                for p in players:
                    for e in p.errors[:3]:
                        print(f"  player {p.number}: {e}", file=sys.stderr)
        finally:
            server.stop()
        lost = lost_turns(saves_dir, everyone)
    print(table(results))
    line = {
        "players": {
            n: {k: r[k] for k in ("turns_per_s", "p50_s", "p90_s", "p99_s")}
            for n, r in results.items()
        },
        "lost_turns": lost,
        "errors": sum(r["errors"] for r in results.values()),
    }
    print(json.dumps(line))
    return 0 if lost == 0 and line["errors"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
