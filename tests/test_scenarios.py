"""Built-in and user scenarios: they load, expand fully, and are seeded.

Also how broken scenario files fail: a ScenarioError that names the file.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from dungeon.scenarios import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    find_scenario,
    load_scenario_file,
    parse_scenario,
)

EXPECTED = {
    "apocalypse",
    "cyberpunk",
    "fairytale",
    "fantasy",
    "horror",
    "mystery",
    "mythic",
    "pirates",
    "scifi",
    "western",
}
BUILTINS = builtin_scenarios()
SEEDS = range(40)


def all_texts(sc: Scenario, seed: int) -> list[str]:
    """Every text a start produces: title, premise, memory, author's note, world info."""
    story = sc.start(seed)
    texts = [story.title, story.premise, story.author_note, *story.memory]
    for w in story.world:
        texts += [w.text, *w.keys, *w.secondary_keys]
    return texts


def minimal(**changes) -> dict:
    data = {
        "name": "tiny",
        "title": "Tiny",
        "genre": "test",
        "description": "A tiny scenario for tests.",
        "premise": "You are {hero}, standing in {place}.",
        "memory": ["You are {hero}."],
        "world": [{"keys": ["{place}"], "text": "{place} is quiet."}],
        "grammar": {"hero": ["Ana", "Bo", "Cyd"], "place": ["a field", "a cave", "a hall"]},
    }
    data.update(changes)
    return data


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


# --- built-in scenarios ---------------------------------------------------------------------


def test_every_builtin_scenario_is_there():
    assert set(BUILTINS) == EXPECTED
    assert list(BUILTINS) == sorted(BUILTINS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_scenario_validates(name):
    sc = BUILTINS[name]
    assert sc.name == name
    assert sc.source.endswith(f"{name}.json")
    for text in (sc.title, sc.genre, sc.description, sc.premise):
        assert text.strip()
    assert "\n" not in sc.description
    assert 1 <= len(sc.memory) <= 2
    assert 2 <= len(sc.world) <= 4
    assert len(sc.grammar) >= 6
    for symbol, options in sc.grammar.items():
        assert len(options) >= 5, f"{name}: {{{symbol}}} has {len(options)} options"
        assert len(set(options)) == len(options), f"{name}: {{{symbol}}} repeats an option"
    # Parsing the file again gives the same scenario: the file itself is valid.
    path = Path(str(resources.files("dungeon") / "scenarios" / f"{name}.json"))
    assert load_scenario_file(path).premise == sc.premise


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_seed_same_start(name):
    sc = BUILTINS[name]
    for seed in (0, 1, 12345):
        a, b = sc.start(seed), sc.start(seed)
        assert a.premise == b.premise
        assert a.memory == b.memory
        assert [(w.keys, w.text) for w in a.world] == [(w.keys, w.text) for w in b.world]
        assert a.seed == seed


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_different_seeds_different_starts(name):
    sc = BUILTINS[name]
    premises = {sc.start(seed).premise for seed in range(5)}
    assert len(premises) >= 3, f"{name}: 5 seeds gave only {len(premises)} premises"
    assert len({sc.start(seed).premise for seed in SEEDS}) >= 0.75 * len(SEEDS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_symbol_is_expanded(name):
    sc = BUILTINS[name]
    for seed in SEEDS:
        for text in all_texts(sc, seed):
            assert "{" not in text and "}" not in text, f"{name} seed {seed}: {text!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expansions_read_cleanly(name):
    sc = BUILTINS[name]
    for seed in SEEDS:
        story = sc.start(seed)
        premise = story.premise
        assert premise.startswith("You are ")
        assert premise.endswith((".", "?", "!"))
        assert len(premise.split()) <= 130, f"{name} seed {seed}: premise too long"
        unabbreviated = re.sub(r"\b(Dr|Mr|Mrs|Ms|St)\.", r"\1", premise)
        sentences = len(re.findall(r"[.!?](?:\s|$)", unabbreviated))
        assert 2 <= sentences <= 4, f"{name} seed {seed}: {sentences} sentences"
        for text in [premise, *story.memory, *(w.text for w in story.world)]:
            assert not re.search(r"\b(\w+) \1\b", text, re.IGNORECASE), text
            assert not re.search(r"\ba [aeiou]", text, re.IGNORECASE), text
            assert "  " not in text and " ," not in text and ",," not in text, text
            for sentence in re.split(r"(?<=[.!?]) ", text):
                assert sentence[:1].isupper(), f"{name} seed {seed}: {sentence!r}"
        # World info is keyed on names the story actually uses.
        assert any(k.lower() in premise.lower() for w in story.world for k in w.keys), name


# --- broken scenarios -----------------------------------------------------------------------


def test_undefined_symbol_names_file_and_symbol(tmp_path):
    bad = minimal(premise="You are {hero} with {sidekick}.")
    path = write(tmp_path / "undefined.json", bad)
    with pytest.raises(ScenarioError) as err:
        load_scenario_file(path)
    assert str(path) in str(err.value)
    assert "{sidekick}" in str(err.value)


def test_undefined_symbol_inside_grammar_or_world(tmp_path):
    bad = minimal(grammar={"hero": ["{title} Ana"], "place": ["a hall"]})
    with pytest.raises(ScenarioError, match=r"\{title\}"):
        parse_scenario(bad, "inline.json")
    bad = minimal(world=[{"keys": ["{villain}"], "text": "A villain."}])
    with pytest.raises(ScenarioError, match=r"\{villain\}"):
        parse_scenario(bad, "inline.json")


@pytest.mark.parametrize("field", ["name", "title", "genre", "description", "premise"])
def test_missing_field_names_file_and_field(tmp_path, field):
    bad = minimal()
    del bad[field]
    path = write(tmp_path / f"no-{field}.json", bad)
    with pytest.raises(ScenarioError) as err:
        load_scenario_file(path)
    assert str(path) in str(err.value)
    assert f"'{field}'" in str(err.value)


def test_every_problem_is_listed(tmp_path):
    bad = minimal(title="", premise="You are {who}.", memory="not a list")
    with pytest.raises(ScenarioError) as err:
        parse_scenario(bad, "many.json")
    message = str(err.value)
    assert message.startswith("many.json:")
    assert "'title'" in message and "{who}" in message and "'memory'" in message


@pytest.mark.parametrize(
    "grammar",
    [{"hero": []}, {"hero": "Ana"}, {"hero": [1, 2]}, ["hero"]],
)
def test_bad_grammar_is_an_error(grammar):
    with pytest.raises(ScenarioError, match="grammar"):
        parse_scenario(minimal(grammar=grammar), "g.json")


@pytest.mark.parametrize("text", ['{"name": "x",', "", "[1, 2", "{'name': 'single quotes'}"])
def test_bad_json_names_file(tmp_path, text):
    path = write(tmp_path / "broken.json", text)
    with pytest.raises(ScenarioError) as err:
        load_scenario_file(path)
    assert str(path) in str(err.value)
    # Passing the path to find_scenario (as --scenario does) fails the same way.
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        find_scenario(str(path))


def test_not_an_object_names_file(tmp_path):
    path = write(tmp_path / "list.json", "[]")
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        load_scenario_file(path)


def test_not_utf8_names_file(tmp_path):
    path = tmp_path / "latin1.json"
    text = json.dumps(minimal(title="Caf\u00e9"), ensure_ascii=False)
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ScenarioError, match=re.escape(str(path))):
        load_scenario_file(path)


def test_broken_file_in_user_folder_names_that_file(tmp_path):
    write(tmp_path / "good.json", minimal())
    broken = write(tmp_path / "oops.json", minimal(name="oops", premise="You are {nobody}."))
    # A broken file does not block the others...
    assert find_scenario("tiny", [tmp_path]).name == "tiny"
    # ...and is named when the scenario asked for cannot be found.
    with pytest.raises(ScenarioError, match=re.escape(str(broken))):
        find_scenario("oops", [tmp_path])


def test_too_deep_nesting_is_an_error():
    grammar = {f"s{i}": [f"{{s{i + 1}}}"] for i in range(12)}
    grammar["s12"] = ["end"]
    sc = parse_scenario(minimal(premise="{s0}", memory=[], world=[], grammar=grammar), "deep.json")
    with pytest.raises(ScenarioError, match=r"deep\.json"):
        sc.start(0)


# --- finding scenarios ----------------------------------------------------------------------


def test_unknown_name_lists_the_choices():
    with pytest.raises(ScenarioError) as err:
        find_scenario("no-such-scenario")
    message = str(err.value)
    assert "no-such-scenario" in message
    for name in EXPECTED:
        assert name in message


def test_unknown_name_lists_user_scenarios_too(tmp_path):
    write(tmp_path / "tiny.json", minimal())
    with pytest.raises(ScenarioError, match="tiny"):
        find_scenario("nope", [tmp_path])


def test_find_builtin_by_name():
    assert find_scenario("western").name == "western"


def test_find_by_path(tmp_path):
    path = write(tmp_path / "anything.json", minimal())
    sc = find_scenario(str(path))
    assert sc.name == "tiny"
    assert sc.start(3).premise == sc.start(3).premise
    assert "{" not in sc.start(3).premise


def test_user_folder_scenario_is_found_by_name(tmp_path):
    write(tmp_path / "tiny.json", minimal())
    assert find_scenario("tiny", [tmp_path]).name == "tiny"
    # A user scenario with a built-in's name replaces it.
    write(tmp_path / "my-fantasy.json", minimal(name="fantasy", title="Mine"))
    assert find_scenario("fantasy", [tmp_path]).title == "Mine"
