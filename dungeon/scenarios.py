"""Built-in scenarios: data files that start a story, with names drawn from small grammars.

A scenario is a JSON file in ``dungeon/scenarios/`` (or any folder passed in)::

    {
      "name": "fantasy",                      # what --scenario takes
      "title": "The Ember Crown",
      "genre": "fantasy",
      "description": "One line for the start menu.",
      "premise": "You are {hero}, a {role} of {town}. ...",
      "memory": ["You are {hero}."],           # optional pinned facts
      "author_note": "",                       # optional
      "world": [{"keys": ["{rival}"], "text": "{rival} wants the crown."}],   # optional
      "grammar": {"hero": ["Aldra", "Benedek"], "role": ["smith", "{adj} scribe"], "adj": ["young"]}
    }

``{symbol}`` picks one option of ``grammar[symbol]`` with a seeded RNG; options may use other
symbols. A symbol keeps its first pick for the whole start, so ``{hero}`` is one person
throughout. Every symbol used must be defined: a scenario is checked when it is loaded.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dungeon.cleanup import sanitize
from dungeon.story import Story, WorldEntry

_SYMBOL = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
MAX_DEPTH = 8


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and every problem."""


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    genre: str
    description: str
    premise: str
    grammar: dict[str, list[str]]
    memory: list[str] = field(default_factory=list)
    author_note: str = ""
    world: list[dict] = field(default_factory=list)
    source: str = ""

    def start(self, seed: int) -> Story:
        """A new Story from this scenario; the same seed gives the same story."""
        rng = random.Random(f"{self.name}/{seed}")
        picks: dict[str, str] = {}

        def expand(text: str, depth: int = 0) -> str:
            def pick(m: re.Match) -> str:
                sym = m.group(1)
                if sym not in picks:
                    if depth >= MAX_DEPTH:
                        raise ScenarioError(f"{self.source}: symbol {{{sym}}} nests too deeply")
                    picks[sym] = expand(rng.choice(self.grammar[sym]), depth + 1)
                return picks[sym]

            return _SYMBOL.sub(pick, text)

        premise = expand(self.premise)
        world = [
            WorldEntry(
                keys=[expand(k) for k in w.get("keys", [])],
                text=expand(w["text"]),
                secondary_keys=[expand(k) for k in w.get("secondary_keys", [])],
                constant=bool(w.get("constant", False)),
            )
            for w in self.world
        ]
        return Story(
            premise=premise,
            memory=[expand(m) for m in self.memory],
            author_note=expand(self.author_note),
            world=world,
            title=expand(self.title),
            seed=seed,
        )


def parse_scenario(data: object, source: str) -> Scenario:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario is a JSON object")
    for key in ("name", "title", "genre", "description", "premise"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"needs a non-empty text field '{key}'")
    grammar = data.get("grammar", {})
    if not isinstance(grammar, dict) or not all(
        isinstance(v, list) and v and all(isinstance(o, str) for o in v) for v in grammar.values()
    ):
        problems.append("'grammar' maps each symbol to a non-empty list of texts")
        grammar = {}
    memory = data.get("memory", [])
    if not isinstance(memory, list) or not all(isinstance(m, str) for m in memory):
        problems.append("'memory' is a list of texts")
        memory = []
    world = data.get("world", [])
    if not isinstance(world, list) or not all(
        isinstance(w, dict) and isinstance(w.get("text"), str) for w in world
    ):
        problems.append("'world' is a list of objects with 'keys' and 'text'")
        world = []
    texts = [data.get("premise", ""), data.get("title", ""), data.get("author_note", ""), *memory]
    for w in world:
        texts += [w.get("text", ""), *w.get("keys", []), *w.get("secondary_keys", [])]
    for options in grammar.values():
        texts += options
    used = {m.group(1) for t in texts if isinstance(t, str) for m in _SYMBOL.finditer(t)}
    for sym in sorted(used - set(grammar)):
        problems.append(f"uses {{{sym}}} but the grammar does not define it")
    if problems:
        raise ScenarioError(f"{source}: " + "; ".join(problems))

    def clean(s: str) -> str:
        return sanitize(s).strip()

    return Scenario(
        name=clean(data["name"]),
        title=clean(data["title"]),
        genre=clean(data["genre"]),
        description=clean(data["description"]),
        premise=clean(data["premise"]),
        grammar={k: [sanitize(o) for o in v] for k, v in grammar.items()},
        memory=[clean(m) for m in memory],
        author_note=clean(data.get("author_note", "") or ""),
        world=world,
        source=source,
    )


def load_scenario_file(path: Path) -> Scenario:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ScenarioError(f"{path}: cannot read the scenario ({err})") from None
    return parse_scenario(data, str(path))


def builtin_scenarios() -> dict[str, Scenario]:
    """The scenarios shipped in the package, by name, sorted."""
    found = {}
    folder = resources.files("dungeon") / "scenarios"
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            source = f"dungeon/scenarios/{entry.name}"
            try:
                data = json.loads(entry.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ScenarioError(f"{source}: cannot read the scenario ({err})") from None
            sc = parse_scenario(data, source)
            found[sc.name] = sc
    return found


def scenario_catalogue(
    extra_dirs: list[Path] | None = None,
) -> tuple[dict[str, Scenario], list[str]]:
    """Every scenario by name (built-in, then ``extra_dirs``, later folders winning), and one
    problem line per file that cannot be read; a broken file never hides the others."""
    problems: list[str] = []
    try:
        every = builtin_scenarios()
    except (OSError, ValueError) as err:
        every = {}
        problems.append(f"cannot read the built-in scenarios: {err}")
    for d in extra_dirs or []:
        for p in sorted(Path(d).glob("*.json")):
            try:
                sc = load_scenario_file(p)
            except ScenarioError as err:
                problems.append(str(err))
                continue
            every[sc.name] = sc
    return every, problems


def find_scenario(name: str, extra_dirs: list[Path] | None = None) -> Scenario:
    """A scenario by name (built-in or in ``extra_dirs``) or by the path of a JSON file.

    A broken file in ``extra_dirs`` only matters when nothing else answers to ``name``: then
    its error is reported with the list of choices.
    """
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return load_scenario_file(path)
    every, broken = scenario_catalogue(extra_dirs)
    if name in every:
        return every[name]
    message = f"no scenario named {name!r}; choose one of: {', '.join(sorted(every))}"
    if broken:
        message += "; these files could not be read: " + " | ".join(broken)
    raise ScenarioError(message)
