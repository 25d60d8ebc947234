"""Player input: actions and ``/commands``, parsed here and dispatched through a registry.

Each command is a small handler ``(session, args) -> None`` registered with a name, a usage
line and a help text; the input loop only calls ``dispatch``. Parsing is pure and tested on
its own.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from dungeon import saves
from dungeon.format import Mode
from dungeon.game import NothingToDo
from dungeon.session import Session, check_slot, list_saves
from dungeon.story import WorldEntry
from dungeon.world_state import describe

Handler = Callable[[Session, str], None]


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    usage: str
    help: str
    aliases: tuple[str, ...] = ()
    arguments: Callable[[Session | None], list[str]] | None = None
    """Completions for the first argument."""


@dataclass
class Registry:
    commands: dict[str, Command] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, usage: str, help: str, aliases=(), arguments=None):
        def register(fn: Handler) -> Handler:
            self.commands[name] = Command(name, fn, usage, help, tuple(aliases), arguments)
            for a in aliases:
                self.aliases[a] = name
            return fn

        return register

    def find(self, name: str) -> Command:
        name = name.lower()
        if name in self.commands:
            return self.commands[name]
        if name in self.aliases:
            return self.commands[self.aliases[name]]
        # A unique prefix is enough: /und -> /undo.
        starts = [c for c in self.commands if c.startswith(name)]
        if len(starts) == 1:
            return self.commands[starts[0]]
        raise UnknownCommand(name, self.suggest(name))

    def suggest(self, name: str) -> str | None:
        close = difflib.get_close_matches(name, [*self.commands, *self.aliases], n=1, cutoff=0.5)
        if close:
            return self.aliases.get(close[0], close[0])
        return None


class UnknownCommand(Exception):
    def __init__(self, name: str, suggestion: str | None):
        self.name, self.suggestion = name, suggestion
        hint = f"; did you mean /{suggestion}?" if suggestion else "; type /help for the list"
        super().__init__(f"unknown command /{name}{hint}")


@dataclass(frozen=True)
class Parsed:
    """One line of player input: a command with its argument text, or an action."""

    kind: Literal["command", "action"]
    text: str
    """The command's arguments, or the action as typed (without its ``"`` or ``!``)."""
    command: str = ""
    """The command's name (lower case) when ``kind`` is "command"."""
    mode: Mode = "do"
    """How the action is played when ``kind`` is "action": do, say or story."""


def parse_input(line: str) -> Parsed:
    """``/cmd args`` is a command; a leading ``"`` is speech, ``!`` is story text, else do."""
    stripped = line.strip()
    if stripped.startswith("/") and len(stripped) > 1 and not stripped.startswith("//"):
        name, _, rest = stripped[1:].partition(" ")
        return Parsed("command", rest.strip(), command=name.lower())
    if stripped.startswith("//"):  # "//" escapes a literal slash
        return Parsed("action", stripped[1:], mode="do")
    if stripped.startswith('"') or stripped.startswith("“"):
        return Parsed("action", stripped, mode="say")
    if stripped.startswith("!"):
        return Parsed("action", stripped[1:].strip(), mode="story")
    return Parsed("action", stripped, mode="do")


# ---------------------------------------------------------------------------------------------
# The commands

REGISTRY = Registry()
cmd = REGISTRY.add


def show_stream(session: Session, pieces, what: str = "turn") -> None:
    """Write streamed story text; Ctrl-C cancels it and the story stays as it was.

    When the turn's chosen response is not what was streamed (a better candidate finished
    after the first was shown), the chosen one is shown after it.
    """
    shown = []
    try:
        for piece in pieces:
            shown.append(piece)
            session.out.story_piece(piece)
    except KeyboardInterrupt:
        session.out.end_story()
        session.out.system(f"({what} cancelled; the story is as it was)")
        return
    session.out.end_story()
    turn = session.game.story.turns[-1] if session.game.story.turns else None
    if turn is not None and " ".join("".join(shown).split()) != " ".join(turn.response.split()):
        session.out.system(f"(response {turn.chosen + 1} of {len(turn.candidates)} reads better:)")
        session.out.story(turn.response)
    if session.game.last_flagged:
        session.out.system("(this response may repeat itself; /retry for another)")


def play_turn(session: Session, text: str, mode: Mode) -> None:
    """Play one turn to the output (the input's notice, if any, first)."""
    stream = session.game.stream(text, mode)
    if session.game.last_notice:
        session.out.system(session.game.last_notice)
    show_stream(session, stream)


@cmd(
    "help",
    "/help [COMMAND]",
    "List the commands, or explain one.",
    aliases=("h", "?"),
    arguments=lambda s: list(REGISTRY.commands),
)
def _help(session: Session, args: str) -> None:
    if args:
        c = REGISTRY.find(args.lstrip("/"))
        session.out.system(f"{c.usage}\n  {c.help}")
        return
    lines = ['Type what you do ("I open the door"), or:']
    lines += [f"  {c.usage:<28} {c.help}" for c in REGISTRY.commands.values()]
    lines.append('  "text  say it      !text  story text      (empty line)  continue')
    session.out.system("\n".join(lines))


@cmd("do", "/do ACTION", "Do something (the default for plain input).")
def _do(session: Session, args: str) -> None:
    play_turn(session, args, "do")


@cmd("say", "/say TEXT", 'Say something (also: start the line with ").')
def _say(session: Session, args: str) -> None:
    play_turn(session, args, "say")


@cmd("story", "/story TEXT", "Write the story yourself; the model continues it (also: !text).")
def _story(session: Session, args: str) -> None:
    play_turn(session, args, "story")


@cmd("continue", "/continue", "Let the story go on without an action (also: an empty line).")
def _continue(session: Session, args: str) -> None:
    play_turn(session, "", "continue")


@cmd("undo", "/undo", "Take back the last turn.", aliases=("u",))
def _undo(session: Session, args: str) -> None:
    turn = session.game.undo()
    label = turn.action or "(continue)"
    session.out.system(f"Undone: {label}")


@cmd("redo", "/redo", "Bring back the turn you undid.")
def _redo(session: Session, args: str) -> None:
    turn = session.game.redo()
    if turn.action:
        session.out.player(turn.action)
    session.out.story(turn.response)


@cmd("retry", "/retry", "Write the last response again (the old one is kept).", aliases=("r",))
def _retry(session: Session, args: str) -> None:
    show_stream(session, session.game.retry_stream(), "retry")


@cmd(
    "choose",
    "/choose [N]",
    "Show response N of the last turn (its candidates and retries); without N, list them.",
)
def _choose(session: Session, args: str) -> None:
    game = session.game
    if not game.story.turns:
        raise NothingToDo("nothing to choose: the story has no turns yet")
    turn = game.story.turns[-1]
    if not args:
        lines = [f"The last turn has {len(turn.candidates)} response(s):"]
        for i, c in enumerate(turn.candidates, start=1):
            mark = "*" if i - 1 == turn.chosen else " "
            first = " ".join(c.text.split())[:70] or "(empty)"
            lines.append(f" {mark}{i}. {first}{'' if c.shown else '  (new)'}")
        session.out.system("\n".join(lines))
        return
    turn = game.choose(_index(args, "response", verb="show"))
    session.out.system(f"Response {turn.chosen + 1} of {len(turn.candidates)}:")
    session.out.story(turn.response)


@cmd("alter", "/alter [TEXT]", "Edit the last response (opens an editor without TEXT).")
def _alter(session: Session, args: str) -> None:
    game = session.game
    if not game.story.turns:
        raise NothingToDo("nothing to alter: the story has no turns yet")
    text = args
    if not text:
        if session.edit is None:
            raise ValueError("give the new text: /alter TEXT")
        text = session.edit("Edit the last response", game.story.turns[-1].response) or ""
        if not text.strip():
            session.out.system("(unchanged)")
            return
    game.alter(text)
    session.out.system("The last response now reads:")
    session.out.story(game.story.turns[-1].response)


@cmd("memory", "/memory", "Show what the model always remembers.")
def _memory(session: Session, args: str) -> None:
    memory = session.game.story.memory
    if not memory:
        session.out.system("Memory is empty. Add a fact with /remember TEXT.")
        return
    session.out.system("\n".join(f"{i}. {m}" for i, m in enumerate(memory, start=1)))


@cmd("remember", "/remember TEXT", "Pin a fact so the model never forgets it.")
def _remember(session: Session, args: str) -> None:
    session.game.remember(args)
    session.out.system(
        f"Remembered ({len(session.game.story.memory)}): {session.game.story.memory[-1]}"
    )


def _index(args: str, what: str, verb: str = "remove") -> int:
    try:
        n = int(args)
    except ValueError:
        raise ValueError(f"give the number of the {what} to {verb}, e.g. 1") from None
    return n - 1


@cmd("forget", "/forget N", "Remove memory entry N (see /memory).")
def _forget(session: Session, args: str) -> None:
    fact = session.game.forget(_index(args, "memory entry"))
    session.out.system(f"Forgot: {fact}")


@cmd(
    "note",
    "/note [TEXT|clear]",
    "Show or set the author's note (style and direction hints).",
    arguments=lambda s: ["clear"],
)
def _note(session: Session, args: str) -> None:
    if not args:
        note = session.game.story.author_note
        session.out.system(
            f"Author's note: {note}" if note else "No author's note. Set one with /note TEXT."
        )
        return
    session.game.set_author_note("" if args.lower() == "clear" else args)
    session.out.system(
        "Author's note cleared." if args.lower() == "clear" else "Author's note set."
    )


@cmd(
    "world",
    "/world [add KEYS: TEXT | remove N]",
    "List world info; add an entry (keys comma-separated) or remove one.",
    arguments=lambda s: ["list", "add", "remove"],
)
def _world(session: Session, args: str) -> None:
    sub, _, rest = args.partition(" ")
    sub = sub.lower()
    game = session.game
    if sub in ("", "list"):
        if not game.story.world:
            session.out.system("No world info. Add: /world add dragon, wyrm: Dragons hoard salt.")
            return
        lines = []
        for i, e in enumerate(game.story.world, start=1):
            keys = "always" if e.constant else ", ".join(e.keys)
            if e.secondary_keys:
                keys += f" + ({', '.join(e.secondary_keys)})"
            lines.append(f"{i}. [{keys}] {e.text}")
        session.out.system("\n".join(lines))
    elif sub == "add":
        keys, sep, text = rest.partition(":")
        if not sep or not text.strip() or not keys.strip():
            raise ValueError("use: /world add KEY, OTHER KEY: the text the model should know")
        constant = keys.strip().lower() in ("*", "always")
        entry = WorldEntry([] if constant else keys.split(","), text.strip(), constant=constant)
        game.add_world_entry(entry)
        session.out.system(f"World entry {len(game.story.world)} added.")
    elif sub == "remove":
        entry = game.remove_world_entry(_index(rest, "world entry"))
        session.out.system(f"Removed: {entry.text}")
    else:
        raise ValueError("use /world, /world add KEYS: TEXT or /world remove N")


@cmd(
    "state",
    "/state [add ITEM|drop ITEM|forget NAME]",
    "Show what you carry, your condition, people and places; fix what the engine read.",
    arguments=lambda s: ["add", "drop", "forget"],
)
def _state(session: Session, args: str) -> None:
    sub, _, rest = args.strip().partition(" ")
    sub, game = sub.lower(), session.game
    if sub in ("", "show", "list"):
        text = describe(game.story.state)
        if not game.settings.state:
            text += "\n(kept, but left out of the model's context: /set state on)"
        session.out.system(text)
        return
    if sub not in ("add", "drop", "forget"):
        raise ValueError("use /state, /state add ITEM, /state drop ITEM or /state forget NAME")
    name = " ".join(rest.split())
    game.edit_state(sub, name)  # type: ignore[arg-type]
    done = {"add": "You now carry", "drop": "You no longer carry", "forget": "Forgotten"}
    session.out.system(f"{done[sub]}: {name}")


_ON_OFF = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}


@cmd(
    "set",
    "/set KEY VALUE",
    "Change a setting, e.g. /set temperature 0.7 (see /settings).",
    arguments=lambda s: (
        [*(s.game.sampling.to_dict() if s else {}), "candidates", "state"] if s else []
    ),
)
def _set(session: Session, args: str) -> None:
    key, _, value = args.partition(" ")
    if not key or not value.strip():
        raise ValueError("use: /set KEY VALUE (see /settings for the keys)")
    aliases = {"temp": "temperature", "max_tokens": "max_new_tokens", "length": "max_new_tokens"}
    key = aliases.get(key.lower(), key.lower())
    if key == "candidates":
        session.game.set_candidates(value.strip())
        session.out.system(f"candidates = {session.game.settings.candidates}")
        return
    if key == "state":
        on = _ON_OFF.get(value.strip().lower())
        if on is None:
            raise ValueError(f"state takes on or off, got {value.strip()!r}")
        session.game.settings = replace(session.game.settings, state=on)
        session.out.system(f"state = {'on' if on else 'off'}")
        return
    new = session.game.set_sampling(key, value.strip())
    session.out.system(f"{key} = {getattr(new, key)}")
    session.autosave()


@cmd("settings", "/settings", "Show the generation settings.")
def _settings(session: Session, args: str) -> None:
    s = session.game.sampling.to_dict()
    ctx = session.game.context_settings
    lines = [f"  {k:<20} {v}" for k, v in s.items()]
    lines.append(f"  {'candidates':<20} {session.game.settings.candidates}")
    lines.append(f"  {'state':<20} {'on' if session.game.settings.state else 'off'}")
    lines.append(f"  {'context budget':<20} {ctx.budget} tokens")
    session.out.system("\n".join(lines))


@cmd(
    "save",
    "/save [NAME]",
    "Save the game (to NAME, which then becomes its slot).",
    arguments=lambda s: [n for n, _ in list_saves()],
)
def _save(session: Session, args: str) -> None:
    path = session.save(args or None)
    session.out.system(f"Saved to {path}")


@cmd(
    "load",
    "/load [NAME]",
    "Load a saved game (the last one without NAME).",
    arguments=lambda s: [n for n, _ in list_saves()],
)
def _load(session: Session, args: str) -> None:
    name = args
    if not name:
        found = list_saves()
        if not found:
            raise ValueError("there are no saves yet")
        name = found[0][0]
    session.load(name)
    session.out.system(f"Loaded {check_slot(name)}.")
    session.show_recent()


@cmd("saves", "/saves", "List saved games.")
def _saves(session: Session, args: str) -> None:
    import time

    found = list_saves()
    if not found:
        session.out.system("No saves yet.")
        return
    session.out.system(
        "\n".join(
            f"  {n:<24} {time.strftime('%Y-%m-%d %H:%M', time.localtime(t))}" for n, t in found
        )
    )


@cmd("export", "/export [FILE]", "Write the story to FILE (.md for Markdown, else plain text).")
def _export(session: Session, args: str) -> None:
    try:
        name = shlex.split(args)[0] if args else f"{session.slot}.md"
    except ValueError:
        name = args
    path = Path(name).expanduser()
    text = (
        saves.export_markdown(session.game.story)
        if path.suffix.lower() in (".md", ".markdown")
        else saves.export_text(session.game.story)
    )
    try:
        saves.write_atomic(path, text)
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from None
    session.out.system(f"Exported to {path}")


def _scenario_names() -> list[str]:
    from dungeon.scenarios import builtin_scenarios

    return sorted(builtin_scenarios())


@cmd(
    "new",
    "/new [SCENARIO]",
    "Start a new story (the current one stays saved).",
    arguments=lambda s: _scenario_names(),
)
def _new(session: Session, args: str) -> None:
    session.autosave()
    if session.restart is None:
        raise ValueError("this front end cannot start a new story")
    session.restart(session, args)


@cmd("quit", "/quit", "Save and leave.", aliases=("q", "exit"))
def _quit(session: Session, args: str) -> None:
    session.autosave()
    session.quit = True


def dispatch(session: Session, line: str) -> None:
    """Run one line of input. Errors a player can fix are shown, not raised."""
    parsed = parse_input(line)
    try:
        if parsed.kind == "command":
            c = REGISTRY.find(parsed.command)
            c.handler(session, parsed.text)
        else:
            if parsed.text:
                session.out.player(_echo(parsed))
            play_turn(session, parsed.text, parsed.mode)
    except (UnknownCommand, NothingToDo, ValueError, IndexError, saves.SaveError) as err:
        session.out.error(str(err))


def _echo(parsed: Parsed) -> str:
    from dungeon.actions import make_action

    return make_action(parsed.text, parsed.mode).text
