"""dungeon's game API over real HTTP: a real server on a loopback port, fake and tiny models."""

from __future__ import annotations

import json
import threading

import pytest
from serve_helpers import SlowGenerator, running_server, sse_events, wait_until

from dungeon import saves
from dungeon.generator import FakeGenerator


def saved_story(server, game_id: str) -> dict:
    return saves.story_to_dict(saves.load(server.saves / f"{game_id}.json").story)


def stream_turn(client, path: str, body: dict | None = None) -> tuple[str, dict]:
    """The text of the piece events and the final event's data."""
    pieces, last = [], None
    with client.stream("POST", path, json=body) as res:
        assert res.status_code == 200, res.read()
        assert res.headers["content-type"].startswith("text/event-stream")
        for event, data in sse_events(res.iter_lines()):
            if event == "piece":
                pieces.append(json.loads(data)["text"])
            else:
                last = (event, json.loads(data))
    assert last is not None
    assert last[0] == "turn", last
    return "".join(pieces), last[1]


@pytest.fixture
def server(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as s:
        yield s


def test_a_scenario_game_plays_json_and_streamed_turns_and_saves_each_one(server):
    with server.client() as c:
        game = c.post("/v1/games", json={"scenario": "fantasy", "seed": 7}).json()
        gid = game["id"]
        assert gid.startswith("fantasy-")
        assert game["turns"] == [] and game["premise"]
        assert saved_story(server, gid) == game["story"]

        played = c.post(f"/v1/games/{gid}/turns", json={"text": "I look around"}).json()
        assert played["turn"]["action"] == "You look around."
        assert played["turn"]["response"]
        assert saved_story(server, gid) == played["game"]["story"]

        shown, done = stream_turn(
            c, f"/v1/games/{gid}/turns/stream", {"text": "hello", "mode": "say"}
        )
        assert done["turn"]["mode"] == "say"
        assert done["turn"]["response"] == shown.strip()
        assert len(done["game"]["turns"]) == 2
        assert saved_story(server, gid) == done["game"]["story"]
        assert c.get(f"/v1/games/{gid}").json()["story"] == saved_story(server, gid)


def test_the_same_seed_and_actions_tell_the_same_story(server):
    with server.client() as c:
        texts = []
        for _ in range(2):
            gid = c.post("/v1/games", json={"scenario": "mystery", "seed": 11}).json()["id"]
            turn = c.post(f"/v1/games/{gid}/turns", json={"text": "open the letter"}).json()
            texts.append(turn["turn"]["response"])
        assert texts[0] == texts[1]


def test_undo_redo_retry_alter_and_choose_change_the_saved_story(server):
    with server.client() as c:
        gid = c.post("/v1/games", json={"premise": "You stand at a crossroads.", "seed": 3}).json()[
            "id"
        ]
        assert c.post(f"/v1/games/{gid}/undo").status_code == 409  # nothing to undo yet
        c.post(f"/v1/games/{gid}/turns", json={"text": "go north"})
        first = c.post(f"/v1/games/{gid}/turns", json={"text": "go east"}).json()["turn"]

        undone = c.post(f"/v1/games/{gid}/undo").json()
        assert len(undone["turns"]) == 1 and undone["can_redo"]
        assert len(saved_story(server, gid)["turns"]) == 1
        redone = c.post(f"/v1/games/{gid}/redo").json()
        assert redone["turns"][-1]["response"] == first["response"]

        retried = c.post(f"/v1/games/{gid}/retry").json()["turn"]
        assert len(retried["candidates"]) == 2 and retried["chosen"] == 1
        _, streamed = stream_turn(c, f"/v1/games/{gid}/retry/stream")
        assert len(streamed["turn"]["candidates"]) == 3

        altered = c.post(f"/v1/games/{gid}/alter", json={"text": "A wolf howls."}).json()
        assert altered["turns"][-1]["response"] == "A wolf howls."
        back = c.post(f"/v1/games/{gid}/choose", json={"index": 0}).json()
        assert back["turns"][-1]["response"] == first["response"]
        assert saved_story(server, gid) == back["story"]
        assert c.post(f"/v1/games/{gid}/choose", json={"index": 9}).status_code == 422


def test_candidates_are_written_together_and_a_retry_shows_a_waiting_one(tmp_path):
    generator = FakeGenerator()
    with running_server(generator, saves=tmp_path) as server, server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "pirates", "seed": 5, "candidates": 3}).json()[
            "id"
        ]
        turn = c.post(f"/v1/games/{gid}/turns", json={"text": "raise the sails"}).json()["turn"]
        assert len(turn["candidates"]) == 3
        assert len(turn["ready"]) == 2  # written, not yet shown
        calls = generator.calls
        retried = c.post(f"/v1/games/{gid}/retry").json()["turn"]
        assert generator.calls == calls  # shown at once, no new generation
        assert retried["chosen"] == turn["ready"][0]
        # A single turn can ask for its own number of candidates.
        one = c.post(f"/v1/games/{gid}/turns", json={"text": "wait", "candidates": 1}).json()
        assert len(one["turn"]["candidates"]) == 1
        settings = c.patch(f"/v1/games/{gid}/settings", json={"candidates": 2}).json()
        assert settings["settings"]["candidates"] == 2


def test_memory_authors_note_world_info_and_settings_are_saved(server):
    with server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "horror", "seed": 1}).json()["id"]
        base = len(c.get(f"/v1/games/{gid}").json()["story"]["memory"])
        g = c.post(f"/v1/games/{gid}/memory", json={"text": "The lamp is cursed."}).json()
        assert g["story"]["memory"][-1] == "The lamp is cursed."
        g = c.delete(f"/v1/games/{gid}/memory/{base}").json()
        assert len(g["story"]["memory"]) == base
        assert c.delete(f"/v1/games/{gid}/memory/99").status_code == 422
        g = c.put(f"/v1/games/{gid}/author-note", json={"text": "Grim and quiet."}).json()
        assert g["story"]["author_note"] == "Grim and quiet."
        g = c.post(
            f"/v1/games/{gid}/world", json={"keys": ["lamp"], "text": "The lamp hums at night."}
        ).json()
        assert g["story"]["world"][-1]["text"] == "The lamp hums at night."
        assert c.post(f"/v1/games/{gid}/world", json={"keys": [], "text": "x"}).status_code == 422
        g = c.patch(f"/v1/games/{gid}/settings", json={"sampling": {"temperature": 0.3}}).json()
        assert g["settings"]["sampling"]["temperature"] == 0.3
        bad = c.patch(f"/v1/games/{gid}/settings", json={"sampling": {"temperature": 99}})
        assert bad.status_code == 422 and "temperature" in bad.json()["error"]["message"]
        data = saves.load(server.saves / f"{gid}.json")
        assert data.story.author_note == "Grim and quiet."
        assert data.sampling["temperature"] == 0.3


def test_save_copies_list_saves_load_and_export(server):
    with server.client() as c:
        gid = c.post(
            "/v1/games", json={"premise": "You wake on a *beach*.", "seed": 2, "title": "Sand"}
        ).json()["id"]
        c.post(f"/v1/games/{gid}/turns", json={"text": "dig"})
        saved = c.post(f"/v1/games/{gid}/save", json={"name": "my-beach"}).json()
        assert saved["saved"] == "my-beach"
        assert c.post(f"/v1/games/{gid}/save", json={"name": "my-beach"}).status_code == 409
        assert (
            c.post(
                f"/v1/games/{gid}/save", json={"name": "my-beach", "overwrite": True}
            ).status_code
            == 200
        )
        names = [s["name"] for s in c.get("/v1/saves").json()["saves"]]
        assert {"my-beach", gid} <= set(names)
        loaded = c.post("/v1/games", json={"save": "my-beach"}).json()
        assert loaded["id"] == "my-beach" and len(loaded["turns"]) == 1
        md = c.get(f"/v1/games/{gid}/export")
        assert md.headers["content-type"].startswith("text/markdown")
        assert md.text.startswith("# Sand") and "\\*beach\\*" in md.text
        text = c.get(f"/v1/games/{gid}/export", params={"format": "text"}).text
        assert "> You dig." in text
        assert c.get(f"/v1/games/{gid}/export", params={"format": "pdf"}).status_code == 422


def test_a_restarted_server_has_every_game_and_every_committed_turn(tmp_path):
    with running_server(FakeGenerator(), saves=tmp_path) as first, first.client() as c:
        gid = c.post("/v1/games", json={"scenario": "western", "seed": 4}).json()["id"]
        told = [c.post(f"/v1/games/{gid}/turns", json={"text": t}).json() for t in ("wait", "run")]
    with running_server(FakeGenerator(), saves=tmp_path) as second, second.client() as c:
        again = c.get(f"/v1/games/{gid}").json()
        assert [t["response"] for t in again["turns"]] == [t["turn"]["response"] for t in told]
        assert c.post(f"/v1/games/{gid}/turns", json={"text": "hide"}).status_code == 200


def test_a_stream_client_that_vanishes_cancels_the_turn_and_the_story_stays(tmp_path):
    with running_server(SlowGenerator(delay=0.05), saves=tmp_path) as server:
        with server.client() as c:
            gid = c.post("/v1/games", json={"scenario": "fantasy", "seed": 1}).json()["id"]
            before = saved_story(server, gid)
            with c.stream("POST", f"/v1/games/{gid}/turns/stream", json={"text": "run"}) as res:
                for event, _data in sse_events(res.iter_lines()):
                    assert event == "piece"
                    break  # leave after the first piece: the connection closes
        with server.client() as c:
            wait_until(lambda: not c.get(f"/v1/games/{gid}").json()["busy"])
            assert c.get(f"/v1/games/{gid}").json()["turns"] == []
            assert saved_story(server, gid) == before
            assert c.post(f"/v1/games/{gid}/turns", json={"text": "walk"}).status_code == 200


def test_a_game_writing_a_turn_refuses_other_changes(tmp_path):
    with running_server(SlowGenerator(delay=0.05), saves=tmp_path) as server, server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "fantasy", "seed": 1}).json()["id"]
        result = {}
        turn = threading.Thread(
            target=lambda: result.update(
                c.post(f"/v1/games/{gid}/turns", json={"text": "sing"}).json()
            )
        )
        turn.start()
        wait_until(lambda: c.get(f"/v1/games/{gid}").json()["busy"])
        refused = c.post(f"/v1/games/{gid}/memory", json={"text": "x"})
        assert refused.status_code == 409 and "busy" in refused.json()["error"]["message"]
        assert c.post(f"/v1/games/{gid}/turns", json={"text": "dance"}).status_code == 409
        turn.join(30)
        assert result["turn"]["action"] == "You sing."


def test_scenarios_are_listed_and_unknown_ones_refused(server):
    with server.client() as c:
        found = c.get("/v1/scenarios").json()["scenarios"]
        assert {"fantasy", "mystery"} <= {s["name"] for s in found}
        assert all(s["title"] and s["description"] for s in found)
        res = c.post("/v1/games", json={"scenario": "nope"})
        assert res.status_code == 404 and "fantasy" in res.json()["error"]["message"]
        # A path is not a scenario name: nothing is read from the server's disk.
        assert c.post("/v1/games", json={"scenario": "/etc/passwd.json"}).status_code == 404
        two = c.post("/v1/games", json={"scenario": "fantasy", "premise": "x"})
        assert two.status_code == 422


def test_a_game_on_the_tiny_gpt2(tmp_path, tiny_gpt2, one_torch_thread):
    from dungeon.generator import SamplingSettings
    from dungeon.models import load_generator

    generator = load_generator(
        str(tiny_gpt2), settings=SamplingSettings(max_new_tokens=12), device="cpu"
    )
    with running_server(generator, saves=tmp_path) as server, server.client() as c:
        gid = c.post("/v1/games", json={"premise": "You enter the cave.", "seed": 9}).json()["id"]
        shown, done = stream_turn(c, f"/v1/games/{gid}/turns/stream", {"text": "look"})
        response = done["turn"]["response"]
        assert "\x1b" not in response and "\n>" not in response
        assert saved_story(server, gid)["turns"][0]["candidates"][0]["text"] == response
        again = c.post("/v1/games", json={"premise": "You enter the cave.", "seed": 9}).json()
        same = c.post(f"/v1/games/{again['id']}/turns", json={"text": "look"}).json()
        assert same["turn"]["response"] == response


def test_closed_games_reopen_from_their_saves(tmp_path, monkeypatch):
    from dungeon.config import PlayOptions
    from dungeon.serve import store as store_module
    from dungeon.story import Story

    monkeypatch.setattr(store_module, "KEEP_S", 0.0)
    store = store_module.GameStore(FakeGenerator(), PlayOptions(model="fake"), tmp_path, max_open=1)
    first = store.create(Story(premise="You are in a bog.", seed=1), "bog")
    first.session.game.act("wade")
    store.create(Story(premise="You are on a hill.", seed=2), "hill")
    assert not store.is_open(first.id)  # closed to make room; its save has everything
    again = store.get(first.id)
    assert again is not first
    assert again.session.game.story.turns[0].response == first.session.game.story.turns[0].response


def test_the_page_and_the_openapi_schema_are_served(server):
    with server.client() as c:
        page = c.get("/")
        assert page.headers["content-type"].startswith("text/html")
        for asset in ("/static/app.js", "/static/style.css"):
            assert c.get(asset).status_code == 200
        for text in (page.text, c.get("/static/app.js").text, c.get("/static/style.css").text):
            assert "http://" not in text and "https://" not in text  # nothing from elsewhere
        paths = c.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/games",
        "/v1/games/{game_id}/turns/stream",
        "/api/v1/generate",
        "/v1/completions",
    ):
        assert path in paths


def test_the_worlds_state_is_shown_and_the_player_can_fix_it(server):
    with server.client() as c:
        gid = c.post("/v1/games", json={"scenario": "fantasy", "seed": 1}).json()["id"]
        g = c.post(f"/v1/games/{gid}/state", json={"op": "add", "name": "a brass key"}).json()
        assert "brass key" in json.dumps(g["story"]["state"])
        assert saved_story(server, gid)["state"] == g["story"]["state"]
        again = c.post(f"/v1/games/{gid}/state", json={"op": "add", "name": "a brass key"})
        assert again.status_code == 422  # already carried: nothing would change
        assert c.post(f"/v1/games/{gid}/state", json={"op": "burn", "name": "x"}).status_code == 422
