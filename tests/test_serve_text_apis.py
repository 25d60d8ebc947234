"""The KoboldAI- and OpenAI-compatible faces over real HTTP, in the shapes front-ends expect."""

from __future__ import annotations

import json
import threading

import pytest
from serve_helpers import SlowGenerator, running_server, sse_events, wait_until

from dungeon.generator import FakeGenerator, SamplingSettings


@pytest.fixture
def server(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as s:
        yield s


@pytest.fixture(scope="module")
def tiny_server(tiny_gpt2, tmp_path_factory):
    import torch

    from dungeon.models import load_generator

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    generator = load_generator(str(tiny_gpt2), settings=SamplingSettings(), device="cpu")
    with running_server(generator, saves=tmp_path_factory.mktemp("saves")) as s:
        yield s, generator
    torch.set_num_threads(before)


# --- KoboldAI ------------------------------------------------------------------------------


def test_kobold_discovery_answers_like_koboldcpp(server):
    with server.client() as c:
        assert c.get("/api/v1/model").json() == {"result": "fake"}
        assert c.get("/api/v1/info/version").json()["result"].startswith("1.2.")
        extra = c.get("/api/extra/version").json()
        assert extra["result"] == "KoboldCpp" and extra["version"] >= "1.30"
        assert c.get("/api/v1/config/max_length").json() == {"value": 80}
        assert c.get("/api/v1/config/max_context_length").json() == {"value": 2048}
        assert c.get("/api/extra/true_max_context_length").json() == {"value": 2048}


def test_kobold_generate_honours_n_seed_and_max_length(server):
    body = {"prompt": "The gate opens.", "max_length": 6, "sampler_seed": 42, "n": 3}
    with server.client() as c:
        first = c.post("/api/v1/generate", json=body).json()
        again = c.post("/api/v1/generate", json=body).json()
    assert first == again  # the same seed gives the same texts
    assert len(first["results"]) == 3
    for r in first["results"]:
        assert set(r) == {"text", "finish_reason"}
        assert r["finish_reason"] == "length"
    assert len({r["text"] for r in first["results"]}) > 1


def test_kobold_stop_sequences_end_the_text_and_never_appear(tmp_path):
    generator = FakeGenerator(["The door opens. You step inside. END of it."])
    with running_server(generator, saves=tmp_path) as server, server.client() as c:
        res = c.post(
            "/api/v1/generate",
            json={"prompt": "x", "max_length": 100, "stop_sequence": ["You step"]},
        ).json()
    assert res["results"] == [{"text": "The door opens. ", "finish_reason": "stop"}]


def test_kobold_streams_tokens_then_the_finish_reason(server):
    with (
        server.client() as c,
        c.stream(
            "POST", "/api/extra/generate/stream", json={"prompt": "Once", "max_length": 5}
        ) as res,
    ):
        assert res.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(res.iter_lines()))
    assert {e for e, _ in events} == {"message"}
    chunks = [json.loads(d) for _, d in events]
    assert all(set(ch) == {"token", "finish_reason"} for ch in chunks)
    assert [ch["finish_reason"] for ch in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["finish_reason"] == "length"
    assert "".join(ch["token"] for ch in chunks)


def test_kobold_tokencount_gives_the_models_ids(tiny_server):
    server, generator = tiny_server
    with server.client() as c:
        res = c.post("/api/extra/tokencount", json={"prompt": "Hello there, traveller."}).json()
    assert res["ids"] == generator.encode("Hello there, traveller.")
    assert res["value"] == len(res["ids"])


def test_kobold_on_the_tiny_gpt2_is_reproducible_and_fits_the_context(tiny_server):
    server, _ = tiny_server
    body = {
        "prompt": "word " * 3000,  # far longer than the tiny model's 512 tokens
        "max_context_length": 100000,  # more than the model has: reduced, as KoboldCpp does
        "max_length": 8,
        "sampler_seed": 7,
        "temperature": 0.7,
        "rep_pen": 1.1,
        "top_k": 0,
        "typical": 1,
        "tfs": 1,
        "sampler_order": [6, 0, 1, 3, 4, 2, 5],
    }
    with server.client(timeout=120) as c:
        a = c.post("/api/v1/generate", json=body)
        b = c.post("/api/v1/generate", json=body)
    assert a.status_code == 200, a.text
    assert a.json() == b.json()
    assert "\x1b" not in a.json()["results"][0]["text"]


def test_abort_stops_the_running_generation_and_returns_what_was_written(tmp_path):
    generator = SlowGenerator(["word " * 200], delay=0.02)
    with running_server(generator, saves=tmp_path) as server, server.client() as c:
        out = {}
        body = {"prompt": "x", "max_length": 400, "genkey": "KCPP1234"}
        t = threading.Thread(
            target=lambda: out.update(c.post("/api/v1/generate", json=body).json())
        )
        t.start()
        wait_until(lambda: c.get("/api/extra/generate/check").json()["results"][0]["text"])
        partial = c.post("/api/extra/generate/check", json={"genkey": "KCPP1234"}).json()
        assert partial["results"][0]["text"].startswith("word")
        assert c.post("/api/extra/abort", json={"genkey": "KCPP1234"}).json()["success"] == "true"
        t.join(30)
        text = out["results"][0]["text"]
        assert text.startswith("word") and len(text) < len("word " * 200)
        assert c.post("/api/extra/abort").json()["success"] == "false"  # nothing running


def test_a_busy_server_answers_503_with_retry_after_like_koboldcpp(tmp_path):
    generator = SlowGenerator(["word " * 100], delay=0.02)
    with running_server(generator, saves=tmp_path, max_queue=1) as server, server.client() as c:
        body = {"prompt": "x", "max_length": 100}
        threads = [
            threading.Thread(target=lambda: c.post("/api/v1/generate", json=body)) for _ in range(2)
        ]
        threads[0].start()
        wait_until(lambda: server.app.state.dungeon.queue.current is not None)
        threads[1].start()
        wait_until(lambda: server.app.state.dungeon.queue.waiting == 1)
        busy = c.post("/api/v1/generate", json=body)
        assert busy.status_code == 503
        assert int(busy.headers["retry-after"]) >= 1
        assert busy.json() == {
            "detail": {
                "msg": "Server is busy; please try again later.",
                "type": "service_unavailable",
            }
        }
        game = c.post("/v1/games", json={"scenario": "fantasy"}).json()["id"]
        refused = c.post(f"/v1/games/{game}/turns", json={"text": "wait"})
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert not c.get(f"/v1/games/{game}").json()["busy"]  # the refused turn let go
        for t in threads:
            t.join(30)
        assert c.post(f"/v1/games/{game}/turns", json={"text": "wait"}).status_code == 200


# --- OpenAI ---------------------------------------------------------------------------------


def test_openai_models_and_completions_shapes(server):
    with server.client() as c:
        models = c.get("/v1/models").json()
        assert models["object"] == "list" and models["data"][0]["id"] == "fake"
        res = c.post(
            "/v1/completions",
            json={"model": "whatever", "prompt": "Hi", "max_tokens": 4, "n": 2, "seed": 1},
        ).json()
    assert res["object"] == "text_completion" and res["model"] == "fake"
    assert res["id"].startswith("cmpl-") and isinstance(res["created"], int)
    assert [ch["index"] for ch in res["choices"]] == [0, 1]
    for ch in res["choices"]:
        assert set(ch) == {"index", "text", "logprobs", "finish_reason"}
        assert ch["finish_reason"] == "length"
    usage = res["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_prompt_lists_stop_echo_and_seed(tmp_path):
    generator = FakeGenerator(["Red sky. Blue sea. Green land."])
    with running_server(generator, saves=tmp_path) as server, server.client() as c:
        res = c.post(
            "/v1/completions",
            json={"prompt": ["A", "B"], "max_tokens": 50, "stop": "Blue", "echo": True},
        ).json()
        texts = [ch["text"] for ch in res["choices"]]
        assert texts == ["ARed sky. ", "BRed sky. "]
        assert {ch["finish_reason"] for ch in res["choices"]} == {"stop"}
        assert c.post("/v1/completions", json={"prompt": [1, 2, 3]}).status_code == 422
        assert c.post("/v1/completions", json={"prompt": "x", "n": 50}).status_code == 422


def test_openai_stream_sends_chunks_then_done(server):
    with (
        server.client() as c,
        c.stream(
            "POST",
            "/v1/completions",
            json={
                "prompt": "Hi",
                "max_tokens": 5,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as res,
    ):
        lines = [line for line in res.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(ch["object"] == "text_completion" for ch in chunks)
    text = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    assert text
    finals = [ch for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] >= 1


def test_openai_on_the_tiny_gpt2_same_seed_same_text(tiny_server):
    server, _ = tiny_server
    body = {"prompt": "You open the chest and find", "max_tokens": 8, "seed": 3, "temperature": 0.8}
    with server.client(timeout=120) as c:
        a = c.post("/v1/completions", json=body).json()
        b = c.post("/v1/completions", json=body).json()
        with c.stream("POST", "/v1/completions", json={**body, "stream": True}) as res:
            chunks = [
                json.loads(line[6:]) for line in res.iter_lines() if line.startswith("data: {")
            ]
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    streamed = "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"])
    assert streamed == a["choices"][0]["text"]
