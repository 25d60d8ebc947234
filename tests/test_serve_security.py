"""Safe by default: loopback unless told, API keys, limits, validation, CORS, no tracebacks.

Every bad request gets the right 4xx with a JSON message, and the server keeps serving."""

from __future__ import annotations

import socket

import httpx
import pytest
from serve_helpers import SlowGenerator, running_server, sse_events, wait_until

from dungeon.actions import MAX_INPUT_CHARS
from dungeon.generator import FakeGenerator
from dungeon.serve.security import key_matches
from dungeon.serve.settings import ServeSettings, is_loopback

KEY = "correct-horse-battery"


def assert_error(res: httpx.Response, status: int, words: str = "") -> str:
    assert res.status_code == status, res.text
    assert "Traceback" not in res.text
    body = res.json()
    message = body["error"]["message"] if "error" in body else body["detail"]["msg"]
    assert words.lower() in message.lower(), message
    return message


@pytest.fixture
def server(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as s:
        yield s


def test_loopback_by_default_and_other_addresses_need_a_key():
    assert ServeSettings().host == "127.0.0.1"
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        assert is_loopback(host)
    for host in ("0.0.0.0", "192.168.1.5", "::", "example.com"):
        assert not is_loopback(host)
        with pytest.raises(ValueError, match="--api-key"):
            ServeSettings(host=host)
    assert ServeSettings(host="0.0.0.0", api_key=KEY).api_key == KEY
    with pytest.raises(ValueError, match="at least 8"):
        ServeSettings(api_key="short")
    with pytest.raises(ValueError, match="CORS origin"):
        ServeSettings(cors=("example.com",))


def test_api_key_is_required_by_bearer_or_x_api_key(tmp_path):
    with (
        running_server(FakeGenerator(), saves=tmp_path, api_key=KEY) as server,
        server.client() as c,
    ):
        for path in ("/v1/scenarios", "/api/v1/model", "/v1/models"):
            assert_error(c.get(path), 401, "API key")
        assert_error(c.get("/v1/scenarios", headers={"Authorization": "Bearer nope"}), 401)
        assert_error(c.get("/v1/scenarios", headers={"X-Api-Key": KEY + "x"}), 401)
        assert_error(c.post("/api/v1/generate", json={"prompt": "x"}), 401)
        assert c.get("/v1/scenarios", headers={"Authorization": f"Bearer {KEY}"}).is_success
        assert c.get("/api/v1/model", headers={"X-Api-Key": KEY}).is_success
        # The page itself is public (it asks for the key); the API behind it is not.
        assert c.get("/").is_success and c.get("/static/app.js").is_success


def test_key_comparison_is_exact():
    assert key_matches(KEY, KEY)
    assert not key_matches(KEY, None)
    assert not key_matches(KEY, KEY[:-1])
    assert not key_matches(KEY, KEY + "\u00e9")


def test_malformed_json_non_utf8_and_wrong_types_are_4xx_with_a_message(server):
    json_header = {"Content-Type": "application/json"}
    with server.client() as c:
        assert_error(c.post("/v1/games", content=b"{not json", headers=json_header), 400, "JSON")
        assert_error(
            c.post("/v1/games", content=b'{"premise": "\xff\xfe"}', headers=json_header), 400
        )
        assert_error(c.post("/v1/games", content=b"[1, 2]", headers=json_header), 422)
        assert_error(c.post("/v1/games", content=b"{}"), 415, "Content-Type: application/json")
        form = c.post("/api/v1/generate", data={"prompt": "x"})  # a plain HTML form post
        assert_error(form, 415, "JSON")
        assert_error(c.post("/v1/games", json={"scenario": 5}), 422, "scenario")
        assert_error(c.post("/v1/games", json={"premise": "x", "colour": "red"}), 422, "colour")
        assert_error(c.post("/api/v1/generate", json={"prompt": "x", "n": 9}), 422, "n")
        assert_error(c.post("/api/v1/generate", json={"prompt": "x", "max_length": 0}), 422)
        assert_error(c.post("/v1/completions", json={"prompt": "x", "top_p": 2}), 422, "top_p")
        assert_error(c.get("/v1/nothing-here"), 404, "no such endpoint")
        assert_error(c.delete("/v1/scenarios"), 405)
        assert c.get("/health").json()["ok"]


def test_huge_bodies_are_refused_before_they_are_read(server):
    with server.client() as c:
        assert_error(c.post("/v1/games", json={"premise": "x" * 1_200_000}), 413, "too large")

        def chunks():  # no Content-Length: the limit counts the bytes as they come
            yield b'{"premise": "'
            for _ in range(40):
                yield b"x" * 50_000
            yield b'"}'

        res = c.post("/v1/games", content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(res, 413, "too large")
        assert c.get("/health").is_success


def test_field_limits_match_the_terminal_game(server):
    with server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "fantasy"}).json()["id"]
        ok = c.post(f"/v1/games/{gid}/turns", json={"text": "a" * MAX_INPUT_CHARS})
        assert ok.status_code == 200
        too_long = c.post(f"/v1/games/{gid}/turns", json={"text": "a" * (MAX_INPUT_CHARS + 1)})
        assert_error(too_long, 422, f"at most {MAX_INPUT_CHARS}")
        assert_error(c.post(f"/v1/games/{gid}/turns", json={"text": "x", "mode": "fly"}), 422)
        assert_error(c.post("/v1/games", json={"premise": "   "}), 422, "empty")


def test_unknown_games_and_traversal_names_are_refused(server):
    with server.client() as c:
        assert_error(c.get("/v1/games/no-such-game"), 404, "no game")
        assert_error(c.post("/v1/games/no-such-game/turns", json={"text": "x"}), 404)
        assert_error(c.get("/v1/games/..%2F..%2Fetc%2Fpasswd"), 404)
        assert_error(c.get("/v1/games/.hidden"), 400, "save name")
        assert_error(c.post("/v1/games", json={"save": "../../etc/passwd"}), 400, "save name")
        gid = c.post("/v1/games", json={"scenario": "fantasy"}).json()["id"]
        for bad in ("../evil", "/tmp/evil", "a/b", "", "x" * 80, "evil\x00"):
            assert_error(c.post(f"/v1/games/{gid}/save", json={"name": bad}), 422)
        assert sorted(p.name for p in server.saves.iterdir()) == [f"{gid}.json"]


def test_cors_is_off_unless_an_origin_is_given(tmp_path):
    origin = "https://lite.koboldai.net"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    with running_server(FakeGenerator(), saves=tmp_path) as server, server.client() as c:
        res = c.get("/api/v1/model", headers={"Origin": origin})
        assert "access-control-allow-origin" not in res.headers
        assert (
            "access-control-allow-origin"
            not in c.options("/api/v1/generate", headers=preflight).headers
        )
    with (
        running_server(FakeGenerator(), saves=tmp_path, cors=(origin,)) as server,
        server.client() as c,
    ):
        res = c.get("/api/v1/model", headers={"Origin": origin})
        assert res.headers["access-control-allow-origin"] == origin
        other = c.get("/api/v1/model", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_loopback_server_without_a_key_refuses_other_host_names(server):
    with server.client() as c:
        assert c.get("/health", headers={"Host": "localhost:5001"}).is_success
        assert_error(c.get("/v1/scenarios", headers={"Host": "evil.example"}), 421, "localhost")


def test_model_text_is_sanitised_as_in_the_terminal(tmp_path):
    nasty = "The \x1b[31mred\x1b[0m door \x07opens.\x1b]0;pwned\x07 You \u202egasp."
    with running_server(FakeGenerator([nasty]), saves=tmp_path) as server, server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "fantasy"}).json()["id"]
        turn = c.post(f"/v1/games/{gid}/turns", json={"text": "look"}).json()["turn"]
        kobold = c.post("/api/v1/generate", json={"prompt": "x", "max_length": 100}).json()
        openai = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 100}).json()
    for text in (turn["response"], kobold["results"][0]["text"], openai["choices"][0]["text"]):
        assert "red door opens." in text
        assert not any(ch in text for ch in "\x1b\x07\u202e")


def test_a_vanished_stream_client_leaves_the_server_serving(tmp_path):
    with running_server(SlowGenerator(delay=0.05), saves=tmp_path) as server:
        host, port = server.url.removeprefix("http://").split(":")
        raw = socket.create_connection((host, int(port)))
        body = b'{"prompt": "x", "max_length": 60}'
        raw.sendall(
            b"POST /api/extra/generate/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        assert b"200" in raw.recv(4096)
        raw.close()  # gone mid-stream
        queue = server.app.state.dungeon.queue
        wait_until(lambda: queue.current is None and queue.waiting == 0)
        with server.client() as c:
            res = c.post("/api/v1/generate", json={"prompt": "x", "max_length": 3})
            assert res.status_code == 200
            with c.stream(
                "POST", "/api/extra/generate/stream", json={"prompt": "y", "max_length": 2}
            ) as s:
                assert list(sse_events(s.iter_lines()))
