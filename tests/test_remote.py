"""The remote generator against a real ``dungeon serve`` on a loopback port (fake model and
tiny GPT-2): a game through Game, streaming, stop strings, seeds, a busy server, a dead one."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from serve_helpers import SlowGenerator, running_server, wait_until

from dungeon.cleanup import sanitize
from dungeon.game import Game
from dungeon.generator import FakeGenerator, SamplingSettings
from dungeon.models import load_generator
from dungeon.remote import RemoteError, RemoteGenerator, RemoteSettings, load_remote

FAST = {"backoff_s": 0.05, "max_retry_wait_s": 0.2, "connect_timeout_s": 2.0, "timeout_s": 30.0}


@pytest.fixture
def fake_server(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as s:
        yield s


def test_a_game_plays_through_the_remote_generator(fake_server):
    gen = load_generator(fake_server.url + "/v1")
    assert gen.name.startswith("fake@127.0.0.1:")
    assert gen.context_window == 2048  # from /v1/models' max_model_len
    local = FakeGenerator()
    game = Game(gen, "You stand at the gate of a ruined keep.")
    turn = game.act("I open the gate")
    assert turn.response
    again = game.act("I look around")
    assert again.response and len(game.story.turns) == 2
    # Counting goes through the server's /api/extra/tokencount and matches the model's.
    text = "The torchlight flickers, and you step in."
    assert gen.count_tokens(text) == local.count_tokens(text)


def test_stream_is_deterministic_with_a_seed_and_stops_at_stop_strings(fake_server):
    gen = load_remote(fake_server.url + "/v1", **FAST)
    local = FakeGenerator()
    prompt = "You wake in a cold cell.\n> You call for the guard.\n"
    pieces = list(gen.stream(prompt, seed=11))
    assert len(pieces) > 1  # it streamed
    text = "".join(pieces)
    assert text == gen.generate(prompt, seed=11)
    assert text == local.generate(prompt, seed=11)
    assert text != gen.generate(prompt, seed=12) or text != gen.generate(prompt, seed=13)
    # A stop string ends the text and never comes out.
    first_word = text.split()[1]
    cut = gen.generate(prompt, seed=11, stop=[first_word])
    assert first_word not in cut and text.startswith(cut)


def test_a_stop_across_the_prompt_end_is_caught(tmp_path):
    scripted = FakeGenerator(["> You run away.\nThe end."])
    with running_server(scripted, saves=tmp_path) as server:
        gen = load_remote(server.url + "/v1", tokenizer="estimate", **FAST)
        # The prompt ends with "\n"; the response starts with ">": together, the marker.
        assert gen.generate("The story.\n", seed=1, stop=["\n>"]) == ""


def test_a_busy_server_is_retried_until_it_answers(tmp_path):
    slow = SlowGenerator(delay=0.05)
    with running_server(slow, saves=tmp_path, max_queue=1) as server:
        gen = load_remote(server.url + "/v1", **{**FAST, "max_retry_wait_s": 0.5}, retries=20)
        body = {"prompt": "The fog lifted and", "max_tokens": 12, "seed": 1}
        with server.client() as c:
            # One completion runs and one waits: the queue is full, the next request gets 503.
            threads = [
                threading.Thread(target=c.post, args=("/v1/completions",), kwargs={"json": body})
                for _ in range(2)
            ]
            for t in threads:
                t.start()
                time.sleep(0.1)
            wait_until(lambda: c.get("/health").json()["waiting"] == 1)
            text = gen.generate("The fog lifted and", seed=1)
            for t in threads:
                t.join()
        assert text
        assert gen.retries_used >= 1


def test_a_dead_server_is_a_clear_one_line_error():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now
    started = time.monotonic()
    with pytest.raises(RemoteError) as err:
        load_remote(f"http://127.0.0.1:{port}/v1", retries=2, backoff_s=0.01)
    message = str(err.value)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message and "gave up after 3 attempts" in message
    assert time.monotonic() - started < 10


def test_a_server_that_dies_mid_game_raises_remote_error(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as server:
        gen = load_remote(server.url + "/v1", retries=1, backoff_s=0.01)
        game = Game(gen, "You stand at the gate of a ruined keep.")
        game.act("I wait")
    with pytest.raises(RemoteError, match="cannot reach the model server"):
        game.act("I wait again")
    assert len(game.story.turns) == 1  # the story is as it was


def test_wrong_key_and_settings_errors_are_one_line(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path, api_key="s3cret-key") as server:
        with pytest.raises(RemoteError, match="answered 401"):
            load_remote(server.url + "/v1", api_key="wrong-key!", **FAST)
        gen = load_remote(server.url + "/v1", api_key="s3cret-key", **FAST)
        assert gen.generate("Once", seed=3)
    with pytest.raises(RemoteError, match="http://"):
        load_remote("ftp://example.com/v1")


def test_no_tokenize_endpoint_asks_for_a_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(
        RemoteGenerator, "_server_count", lambda self, text, path, probe=False: None
    )
    with running_server(FakeGenerator(), saves=tmp_path) as server:
        with pytest.raises(RemoteError, match="--tokenizer"):
            load_remote(server.url + "/v1", **FAST)
        estimated = load_remote(server.url + "/v1", tokenizer="estimate", **FAST)
        assert estimated.count_tokens("x" * 40) == 10


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_gpt2_served_and_counted_with_a_local_tokenizer(tiny_gpt2, tmp_path):
    served = load_generator(str(tiny_gpt2), settings=SamplingSettings(), device="cpu")
    settings = SamplingSettings(max_new_tokens=12, temperature=0.9)
    with running_server(served, saves=tmp_path) as server:
        gen = load_generator(server.url + "/v1", tokenizer=str(tiny_gpt2))
        assert isinstance(gen, RemoteGenerator)
        assert gen.context_window == served.context_window
        text = "The knight raises her lantern."
        assert gen.count_tokens(text) == served.count_tokens(text)
        # The same seed gives the same text remotely and locally.
        prompt = "You enter the hall.\n> You look around.\n"
        remote_text = gen.generate(prompt, seed=5, settings=settings)
        assert remote_text == gen.generate(prompt, seed=5, settings=settings)
        game = Game(gen, "You stand at the gate of a ruined keep.", sampling=settings)
        game.act("I knock")
        assert len(game.story.turns) == 1
    assert remote_text == sanitize(served.generate(prompt, seed=5, settings=settings))


def test_remote_settings_validate():
    with pytest.raises(ValueError, match="retries"):
        RemoteSettings(url="http://x/v1", retries=99)
    assert RemoteSettings(url="http://x:8000").base == "http://x:8000/v1"
    assert RemoteSettings(url="http://x:8000/v1/").root == "http://x:8000"


def test_dungeon_serve_in_front_of_another_with_the_model(tmp_path):
    """The game on one server, the model on another: turns over HTTP end to end."""
    with running_server(FakeGenerator(), saves=tmp_path / "model") as back:
        remote = load_remote(back.url + "/v1#fake", **FAST)
        assert remote.model == "fake"
        with running_server(remote, saves=tmp_path / "game", batch_size=4) as front:
            assert front.app.state.dungeon.queue.slots == 4  # the model server batches
            with front.client() as c:
                game = c.post("/v1/games", json={"scenario": "fantasy", "seed": 3}).json()
                r = c.post(f"/v1/games/{game['id']}/turns", json={"text": "I light the lamp"})
                assert r.status_code == 200, r.text
                assert r.json()["turn"]["response"]


def test_a_turn_fails_with_502_when_the_model_server_is_gone(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path / "model") as back:
        remote = load_remote(back.url + "/v1", retries=1, backoff_s=0.01)
    with running_server(remote, saves=tmp_path / "game") as front, front.client() as c:
        game = c.post("/v1/games", json={"scenario": "fantasy", "seed": 3}).json()
        r = c.post(f"/v1/games/{game['id']}/turns", json={"text": "I light the lamp"})
        assert r.status_code == 502
        assert "cannot reach the model server" in r.json()["error"]["message"]
        assert c.get(f"/v1/games/{game['id']}").json()["turns"] == []
