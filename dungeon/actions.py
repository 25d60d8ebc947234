"""Player input to action: what the player typed becomes the line the model sees.

``do``: "I pick up my sword" -> "You pick up your sword." (first person becomes second person
outside quotes, a "You" when missing, final punctuation). ``say``: "hello there" ->
'You say "Hello there."'. ``story``: the text as written. Empty input continues the story.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dungeon.cleanup import sanitize
from dungeon.format import Mode

MAX_INPUT_CHARS = 1500
"""Longer input is cut (at a word) with a notice: a 100 KB paste must not stall a turn."""

# Whole-input shortcuts of classic text adventures.
SHORTCUTS = {
    "n": "go north",
    "s": "go south",
    "e": "go east",
    "w": "go west",
    "ne": "go northeast",
    "nw": "go northwest",
    "se": "go southeast",
    "sw": "go southwest",
    "u": "go up",
    "d": "go down",
    "l": "look around",
    "look": "look around",
    "i": "check your inventory",
    "inv": "check your inventory",
    "inventory": "check your inventory",
    "z": "wait",
}
VERB_SHORTCUTS = {"x": "examine", "g": "get"}
# A shortcut's object that already has one of these needs no "the": "x my lamp", "g all".
DETERMINERS = frozenset(
    [
        "a",
        "an",
        "the",
        "my",
        "your",
        "his",
        "her",
        "its",
        "our",
        "their",
        "this",
        "that",
        "these",
        "those",
        "some",
        "any",
        "all",
        "every",
        "each",
        "me",
        "myself",
        "yourself",
        "it",
        "him",
        "them",
        "everything",
    ]
)
# Words after which a "me" belongs to someone else's clause: "ask her to help me" keeps "you".
OTHER_AGENTS = frozenset(
    [
        "him",
        "her",
        "them",
        "it",
        "us",
        "he",
        "she",
        "they",
        "someone",
        "somebody",
        "everyone",
        "anyone",
        "the",
        "a",
        "an",
        "his",
        "their",
        "its",
        "this",
        "that",
        "to",
        "and",
        "but",
        "while",
        "when",
        "who",
        "which",
        "let",
        "make",
        "tell",
        "ask",
        "help",
    ]
)

# First person -> second person. Pairs first, so "I am" never becomes "you am".
_PAIRS = {
    ("i", "am"): "you are",
    ("i", "was"): "you were",
    ("i", "wasn't"): "you weren't",
    ("am", "i"): "are you",
    ("was", "i"): "were you",
    ("wasn't", "i"): "weren't you",
}
_WORDS = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "i'm": "you're",
    "i've": "you've",
    "i'd": "you'd",
    "i'll": "you'll",
    "im": "you're",
    "ive": "you've",
}
# Input that starts with one of these describes the world or asks a question rather than
# naming the player's deed: "the goblin hits me" -> "The goblin hits you.", no "You" added.
NO_SUBJECT_WORDS = frozenset(
    [
        "the",
        "a",
        "an",
        "this",
        "that",
        "these",
        "those",
        "there",
        "it",
        "its",
        "he",
        "she",
        "they",
        "we",
        "his",
        "her",
        "their",
        "our",
        "is",
        "are",
        "was",
        "were",
        "can",
        "could",
        "should",
        "would",
        "will",
        "do",
        "does",
        "did",
        "where",
        "what",
        "who",
        "why",
        "how",
        "which",
        "when",
    ]
)
# Words are runs of letters in any script ("Jāņi" is one word, not "Jāņ" + "i").
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|[\W\d_]+")
_QUOTED = re.compile(r"(\"[^\"]*\"?|“[^”]*”?)")
_END_PUNCT = tuple(".!?…")


@dataclass(frozen=True)
class Action:
    """What a turn sends the model: the rendered action text and its mode."""

    text: str
    mode: Mode
    notice: str | None = None
    """Something the player should know (their input was cut, say)."""


def _match_case(word: str, replacement: str, sentence_start: bool) -> str:
    if sentence_start:
        return replacement[0].upper() + replacement[1:]
    if word.isupper() and len(word) > 1:
        return replacement.upper()
    if word[0].isupper() and word.lower() != "i" and not word.lower().startswith("i'"):
        return replacement[0].upper() + replacement[1:]
    return replacement


def second_person(text: str) -> str:
    """Turn first-person words outside quotes into second person; quoted text is left alone."""
    parts = _QUOTED.split(text)
    out = []
    for k, part in enumerate(parts):
        if k % 2 == 1:  # inside quotes
            out.append(part)
            continue
        out.append(_convert_segment(part, at_start=(k == 0)))
    return "".join(out)


def _convert_segment(segment: str, at_start: bool) -> str:
    normal = segment.replace("’", "'")
    tokens = _TOKEN.findall(normal)
    result: list[str] = []
    sentence_start = at_start
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok[0].isalpha():
            result.append(tok)
            if re.search(r"[.!?]\s*$", tok):
                sentence_start = True
            i += 1
            continue
        low = tok.lower()
        # A pair across one space ("I am", "am I").
        if i + 2 < len(tokens) and tokens[i + 1] == " ":
            pair = _PAIRS.get((low, tokens[i + 2].lower()))
            if pair:
                result.append(_match_case(tok, pair, sentence_start))
                sentence_start = False
                i += 3
                continue
        repl = _WORDS.get(low)
        if repl and (low != "im" or tok == "Im" or tok == "im"):
            result.append(_match_case(tok, repl, sentence_start))
        else:
            result.append(tok)
        sentence_start = False
        i += 1
    converted = "".join(result)
    if "’" in segment:
        converted = converted.replace("'", "’")
    return converted


def _bound(text: str) -> tuple[str, str | None]:
    if len(text) <= MAX_INPUT_CHARS:
        return text, None
    cut = text[:MAX_INPUT_CHARS]
    space = cut.rfind(" ")
    if space > MAX_INPUT_CHARS // 2:
        cut = cut[:space]
    return cut, f"Your input was {len(text):,} characters; only the first {len(cut):,} were used."


def _end_punctuation(text: str) -> str:
    stripped = text.rstrip()
    if not stripped:
        return stripped
    if stripped.endswith(_END_PUNCT):
        return stripped
    core = stripped.rstrip("\"”'’)")
    if core != stripped and core.endswith((*_END_PUNCT, ",")):
        return stripped
    return stripped + "."


def _do(text: str) -> str:
    low = text.lower()
    if low in SHORTCUTS:
        text = SHORTCUTS[low]
    else:
        first, _, rest = text.partition(" ")
        if first.lower() in VERB_SHORTCUTS and rest:
            text = f"{VERB_SHORTCUTS[first.lower()]} {_with_article(rest)}"
    text = _reflexive_me(text)
    text = second_person(text)
    # "You you open the door": players type "you" themselves; keep one.
    text = re.sub(r"^(you)(\s+you\b)+", r"\1", text, flags=re.IGNORECASE)
    if re.match(r"(are|were|weren't) you\b", text, re.IGNORECASE):
        # "Am I dead" -> "Are you dead?": a question about yourself, not an action.
        text = text[0].upper() + text[1:]
        return text if text.endswith(_END_PUNCT) else text.rstrip(".") + "?"
    if re.match(r"you\b", text, re.IGNORECASE):
        text = "You" + text[3:]
    elif re.match(r"your\b", text, re.IGNORECASE):
        text = "Your" + text[4:]
    elif text.split(" ", 1)[0].lower() in NO_SUBJECT_WORDS:
        text = text[0].upper() + text[1:]
    else:
        first = text.split(" ", 1)[0]
        keep_case = first.isupper() and len(first) > 1  # an acronym: "TV", "NPC"
        text = "You " + (text if keep_case else text[0].lower() + text[1:])
    return _end_punctuation(text)


def _with_article(obj: str) -> str:
    """ "lamp" -> "the lamp" for a shortcut's object; "my lamp", "all", "Bob" stay as typed."""
    word = obj.split(" ", 1)[0]
    if word.lower() in DETERMINERS or word[:1].isupper() or word[:1].isdigit():
        return obj
    return "the " + obj


def _reflexive_me(text: str) -> str:
    """ "look at me" -> "look at myself": the player acting on themself, which second_person
    then makes "yourself". Only while the player is the subject: not in "the goblin hits me",
    nor in another's clause ("ask her to help me"), nor inside quotes."""
    words = re.findall(r"[^\W\d_][\w']*", text.split('"', 1)[0].split("“", 1)[0])
    if not words or words[0].lower() in NO_SUBJECT_WORDS:
        return text
    start = 1 if words[0].lower() == "i" else 0
    for word in words[start:]:
        low = word.lower()
        if low == "me":
            return re.sub(r"\bme\b", "myself", text, count=1, flags=re.IGNORECASE)
        if low in OTHER_AGENTS:
            return text
    return text


def _say(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] in '"“' and text[-1] in '"”':
        text = text[1:-1].strip()
    elif text[:1] in '"“':
        text = text[1:].strip()
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    if not text.endswith((*_END_PUNCT, ",")):
        text += "."
    return f'You say "{text}"'


def make_action(raw: str, mode: Mode = "do") -> Action:
    """Turn what the player typed into the action text the model sees.

    Empty (or whitespace-only) input is a *continue* turn. Input over MAX_INPUT_CHARS is cut at
    a word with a notice. Control characters and escape sequences are removed.
    """
    if mode not in ("do", "say", "story", "continue"):
        raise ValueError(f"unknown mode {mode!r}; use do, say or story")
    text = " ".join(sanitize(raw).split())
    text, notice = _bound(text)
    if not text or mode == "continue":
        return Action("", "continue", notice)
    if mode == "do":
        low = text.lower()
        if low.startswith("say "):
            return Action(_say(text[4:]), "say", notice)
        if text[0] in '"“':
            return Action(_say(text), "say", notice)
        return Action(_do(text), "do", notice)
    if mode == "say":
        said = _say(text)
        return Action(said, "say", notice) if said else Action("", "continue", notice)
    return Action(text, "story", notice)
