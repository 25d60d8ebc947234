"""Output cleanup: make raw model text (or text read from a file) safe and tidy to show.

Everything here is a pure function on strings. Model output and loaded files must never be
able to drive the player's terminal, so escape sequences and control characters go first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dungeon.format import STOP_STRINGS

# ECMA-48 escape sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), DCS/SOS/PM/APC
# strings, two-character escapes, and the 8-bit C1 forms of CSI and OSC.
_ESCAPES = re.compile(
    r"""
    \x1b\[[0-?]*[ -/]*[@-~]            # CSI
  | \x9b[0-?]*[ -/]*[@-~]              # 8-bit CSI
  | (?:\x1b\]|\x9d).*?(?:\x07|\x1b\\|\x9c|$)   # OSC ... BEL / ST
  | (?:\x1b[PX^_]|[\x90\x98\x9e\x9f]).*?(?:\x1b\\|\x9c|$)  # DCS SOS PM APC
  | \x1b[ -/]*[0-~]?                  # other escapes (and a lone ESC)
    """,
    re.VERBOSE | re.DOTALL,
)
# C0 and C1 controls except tab and newline, DEL, and bidi overrides that can disguise text.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_SENTENCE_END = re.compile(r"""[.!?…](?:["'”’)\]]*)(?=\s|$)""")


def sanitize(text: str) -> str:
    """Remove terminal escape sequences and control characters; keep tabs (as spaces) and newlines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ESCAPES.sub("", text)
    text = text.replace("\t", " ")
    return _CONTROLS.sub("", text)


def collapse_whitespace(text: str) -> str:
    """One space between words, no spaces at line ends, at most one blank line in a row."""
    text = re.sub(r"[ \u00a0]{2,}", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; also cut a response that *starts* with the marker.

    Returns the kept text and whether a stop was found.
    """
    if text.lstrip().startswith(">"):
        return "", True
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], True
    return text, False


def last_sentence_end(text: str) -> int:
    """Index just past the last complete sentence in ``text`` (0 if there is none)."""
    end = 0
    for m in _SENTENCE_END.finditer(text):
        end = m.end()
    return end


def trim_incomplete(text: str) -> str:
    """Cut a trailing unfinished sentence. Text with no complete sentence at all is kept."""
    end = last_sentence_end(text)
    return text[:end] if end else text


def balance_quotes(text: str) -> str:
    """Close a double quote the model opened and never closed."""
    if text.count('"') % 2 == 1:
        return text + '"'
    if text.count("“") > text.count("”"):
        return text + "”"
    return text


def drop_repeated_sentences(text: str) -> str:
    """Remove a sentence that repeats an earlier sentence of the same response word for word."""
    sentences = re.split(r"(?<=[.!?…])\s+", text)
    seen: set[str] = set()
    kept = []
    for s in sentences:
        key = re.sub(r"\W+", " ", s.lower()).strip()
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(s)
    return " ".join(kept)


def word_ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The word n-grams of ``text`` (lower case), for loop detection."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass(frozen=True)
class Cleaned:
    """A cleaned response and what cleanup noticed on the way."""

    text: str
    stopped: bool = False
    """The model started a player turn, and the text was cut there."""
    trimmed: bool = False
    """An unfinished last sentence was cut."""
    flags: tuple[str, ...] = field(default=())


def clean_response(raw: str, stops: tuple[str, ...] = STOP_STRINGS) -> Cleaned:
    """The whole cleanup of one generated response, in the order that keeps it safe."""
    text = sanitize(raw)
    text, stopped = cut_at_stop(text, stops)
    # One paragraph per response: the format keeps blank lines for turn boundaries.
    text = collapse_whitespace(text).replace("\n", " ")
    text = drop_repeated_sentences(text)
    trimmed_text = trim_incomplete(text)
    trimmed = trimmed_text != text
    text = balance_quotes(trimmed_text.strip())
    flags = []
    if not text:
        flags.append("empty")
    elif last_sentence_end(text) < len(text):
        flags.append("incomplete")
    return Cleaned(text, stopped, trimmed, tuple(flags))


def containment(a: str, b: str) -> float:
    """Share of ``a``'s word trigrams that also occur in ``b`` (1.0: ``a`` repeats ``b``)."""
    sa, sb = word_ngrams(a), word_ngrams(b)
    if not sa or not sb:
        return 0.0
    return len(sa & sb) / len(sa)


def loop_score(text: str, recent: list[str]) -> float:
    """How much ``text`` repeats the recent responses: the highest containment, 0 to 1.

    Texts of fewer than four words never count as loops ("You wait." may well come twice).
    """
    if len(re.findall(r"\w+", text)) < 4:
        return 0.0
    return max((containment(text, r) for r in recent if r), default=0.0)


def stream_view(raw: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
    """The part of a response still being generated that is safe to show: whole sentences.

    Its output is always a prefix of ``clean_response`` of any longer raw text (bar a closing
    quote that cleanup may add), so streamed text never has to be taken back.
    """
    text, _ = cut_at_stop(sanitize(raw), stops)
    text = drop_repeated_sentences(collapse_whitespace(text).replace("\n", " "))
    return text[: last_sentence_end(text)]


# --- measures of a finished response (dungeon eval reports them; the story picker uses them) ---

# The response acting for the player: a marker (at a line start, or run on after other text:
# "...the door.> You run"), or narrating the player's next choice.
_IMPERSONATION = re.compile(
    r"(^|\n)\s*>|>\s*You\b|\bYou (then )?(decide|choose|proceed) to\b|\bYou (say|ask|reply)\s*,?\s*[\"“]",
)


def impersonates(text: str) -> bool:
    return bool(_IMPERSONATION.search(text))


def incomplete(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and not re.search(r"[.!?…][\"'”’)\]]*$", stripped)
