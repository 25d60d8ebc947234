"""Reading one turn for the world's state: which objects it moves, which names and conditions
it states. Pure functions on strings, no I/O; dungeon.world_state folds what they read into the
state.

The patterns are built for precision (an entry that is wrong misleads the model more than a
missing one helps it): a take that the response refuses ("it won't budge") adds nothing, a name
needs a cue ("Nibsy says", "a man named Ortho", "Mr. Dawes"), a condition must be the player's
("your hand is cut"). tests/test_world_state.py measures the precision against hand labels of
the corpus's own turns (tests/data/world_state_labels.json).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dungeon.world_condition import (
    negated,
    read_condition,
)
from dungeon.world_words import (
    ACTS,
    CAP,
    DETERMINERS,
    NAME,
    NOT_ITEMS,
    NOT_NAMES,
    NUMBERS,
    PERSON_NOUNS,
    PHRASE_END,
    PLACE_NOUNS,
    PLACE_PREFIXES,
    PLACE_WORDS,
    REFUSALS,
    SPEECH,
    SPOKEN_REFUSALS,
    TITLE,
    TITLE_WORDS,
    WAYS,
    blank_quotes,
    cut_name,
    head_word,
    normalize,
    quotes,
    same_thing,
    stem,
    unique,
    word_list,
)

# --- reading objects --------------------------------------------------------------------------


def noun_phrase(text: str) -> str | None:
    """The object at the start of ``text``: 'the heavy iron key from the altar.' -> 'heavy iron
    key'. None when it is no carried thing (a pronoun, a name, a body part, 'a breath')."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9'’-]*|[^\sA-Za-z0-9]", text)
    i = 0
    had_det = False
    while i < len(words) and words[i].lower() in DETERMINERS:
        i, had_det = i + 1, True
    if (
        i < len(words)
        and words[i].lower() in ("pair", "piece", "bit", "handful")
        and (i + 1 < len(words) and words[i + 1].lower() == "of")
    ):
        i += 2
    out: list[str] = []
    while i < len(words) and len(out) < 5:
        w = words[i]
        low = w.lower()
        if not re.match(r"[A-Za-z0-9]", w):
            break
        if low == "of":
            nxt = words[i + 1].lower() if i + 1 < len(words) else ""
            if not out or not nxt or nxt in DETERMINERS or nxt in PHRASE_END:
                break
            out.append(w)
            i += 1
            continue
        if low in PHRASE_END or (low.endswith("ly") and len(low) > 4 and out):
            break
        if out and low in DETERMINERS:
            break  # "shortbread your wife baked"
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if (
            out
            and low.endswith("ed")
            and len(low) > 4
            and (not nxt or nxt in PHRASE_END or nxt in DETERMINERS or not nxt[0].isalnum())
        ):
            break  # "the tin wrapped in cloth"
        if w[0].isupper() and not out and not had_det and low not in NUMBERS:
            return None  # a name: "take Pebble"
        out.append(w)
        i += 1
    while out and out[-1].lower() in ("of",):
        out.pop()
    if not out:
        return None
    name = " ".join(out)
    if sum(w[0].isupper() for w in out) >= 2:
        return None  # a name: "the Merry Wren", "the Copperway Bridge"
    head = head_word(name)
    if not head or head in NOT_ITEMS or normalize(name) in NOT_ITEMS or head.isdigit():
        return None
    if any(stem(w) in WAYS for w in normalize(name).split()):
        return None  # "the long road home", "the back stairs"
    if out[0].lower() in NOT_ITEMS and len(out) == 1:
        return None
    return cut_name(name.lower() if not any(c.isupper() for c in name[1:]) else name)


# Verbs that put an object in the player's hands, and ones that take it out.
_TAKE = "|".join(
    sorted(
        word_list("""take takes pick_up picks_up grab grabs get gets collect collects pocket pockets snatch
        snatches scoop_up fetch retrieve take_back take_down pull_out take_out draw unsheathe buy
        buys pry prise"""),
        key=len,
        reverse=True,
    )
).replace("_", " ")
_CLAUSE = r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?"
"""Where an action's clause starts: the line, "and", "then" or a comma, an optional "you" and
an adverb ("then carefully take ...")."""
_ADD_RE = re.compile(
    rf"(?:^|\band |\bthen |, |; )(?:you )?(?:\w+ly )?(?P<verb>{_TAKE}) (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_PICK_UP_AFTER = re.compile(
    _CLAUSE + r"pick (?P<obj>(?:the|a|an|your|my|some) [^,;.!?]+?) up\b",
    re.IGNORECASE,
)
_KEEP_VERBS = re.compile(
    _CLAUSE + r"(?:use|show|hold up|raise|wield|light|load|"
    r"ready|check|read|consult|wave|brandish|point|clutch|grip|put on|wear|tuck|"
    r"tighten|unwrap|sharpen|strap on|fill|refill|reload|wind|polish) (?P<obj>(?:your|my) [^,;.!?]+)",
    re.IGNORECASE,
)
_STORE = re.compile(
    _CLAUSE + r"(?:put|place|slip|tuck|stuff|stow|hide|drop)"
    r" (?P<obj>[^,;.!?]+?) (?:in|into|inside|under|behind|on|onto) (?:your|my) "
    r"(?:pocket|pockets|bag|pack|backpack|satchel|coat|jacket|belt|boot|boots|sleeve|purse|"
    r"pouch|shirt|apron|rucksack|knapsack|haversack|wallet|vest|waistband|sack|basket|hat)\b",
    re.IGNORECASE,
)
_WEAR = re.compile(
    _CLAUSE + r"(?:put on|pull on|don) (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_DROP_RE = re.compile(
    _CLAUSE + r"(?P<verb>throw away|hand over|hand in|give up|"
    r"put down|set down|lay down|pour out|drop|drops|discard|leave|throws|throw|tosses|toss|"
    r"hurl|fling|eats|eat|sells|sell|bury|burn|plant|feed|spend)"
    r" (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_PUT_RE = re.compile(
    _CLAUSE + r"(?:put|place|set|lay|hang|stand|prop|wedge|"
    r"slide|insert|push|jam|leave) (?P<obj>[^,;.!?]+?) (?:in|into|on|onto|under|inside|"
    r"behind|beside|against|through|down)\b(?! (?:your|my)\b)",
    re.IGNORECASE,
)
_PUT_DOWN_AFTER = re.compile(
    _CLAUSE + r"(?:put|set|lay) (?P<obj>(?:the|a|an|your|my) [^,;.!?]+?) down\b",
    re.IGNORECASE,
)
_GIVE_TO = re.compile(
    _CLAUSE + r"(?:give|gives|hand|hands|pass|passes|throw|"
    r"toss|sell|slide|return|take|bring|deliver|lend|trade) (?P<obj>[^,;.!?]+?) (?:back )?"
    rf"to (?P<who>{NAME}|him|her|them|(?:the|your) (?:[a-z]+ )?(?:{PERSON_NOUNS}))\b",
)
_GIVE_WHO = re.compile(
    _CLAUSE + r"(?:give|gives|hand|hands|pass|passes|toss|"
    r"sell|lend|bring|throw) "
    rf"(?P<who>{NAME}|him|her|them|(?:the|your) (?:[a-z]+ )?(?:{PERSON_NOUNS})) "
    r"(?P<obj>(?:the|a|an|your|my|some|his|her|their|this|that|these|those|[a-z]+ )[^,;.!?]*)",
)
_RECEIVED = re.compile(
    r"\b(?:hands|gives|passes|tosses|throws|slides|lends|returns|presses) you "
    r"(?P<obj>(?:a|an|the|his|her|their|its|some|one|two|three|four|five|six|this|that) [^,;.!?\"]+)",
)
_RESPONSE_TAKE = re.compile(
    r"(?:^|(?<=[.!?] )|\band |, )you (?:\w+ly )?(?P<verb>take|pick up|grab|pocket|snatch up|"
    r"tuck|scoop up|slip|stuff|collect) (?P<obj>(?:the|a|an|your|some|one|two|three) [^,;.!?\"]+)",
    re.IGNORECASE,
)
_RESPONSE_DROP = re.compile(
    r"(?:^|(?<=[.!?] )|\band |, )you (?:\w+ly )?(?:drop|lose|let go of|throw away|leave) "
    r"(?P<obj>(?:the|your|everything|it|them)[^,;.!?\"]*)",
    re.IGNORECASE,
)
_INVENTORY_CHECK = re.compile(
    r"\b(?:check|look in|look through|search|empty|go through|rummage in|rummage through|"
    r"take stock of|count) (?:your|my) (?:inventory|pockets?|bag|pack|backpack|satchel|"
    r"belongings|things|gear|kit|knapsack|rucksack|haversack|purse|wallet|pouch|equipment)\b",
    re.IGNORECASE,
)
_LIST_LEAD = re.compile(
    r"^(?:you (?:have|carry|are carrying|'re carrying|still have|own)|you've got|inside|"
    r"in (?:your|it) [a-z]+|there (?:is|are)|you find|you count)\s*:?\s*",
    re.IGNORECASE,
)


def _player_clause_text(action: str) -> str:
    """The action without its quoted speech and without a leading 'You'."""
    text = blank_quotes(action).strip()
    return re.sub(r"^you\s+", "", text, flags=re.IGNORECASE)


def _list_items(response: str) -> list[str]:
    """The objects an inventory listing names: 'A lantern with oil. A coil of rope.'"""
    items: list[str] = []
    for sentence in re.split(r"(?<=[.!?;:])\s+", blank_quotes(response)):
        sentence = _LIST_LEAD.sub("", sentence.strip())
        pieces = re.split(r"(,\s*|\s+and\s+)", sentence)
        for k in range(0, len(pieces), 2):
            piece = pieces[k].strip().rstrip(".!?;:")
            if not piece:
                continue
            after_and = k > 0 and pieces[k - 1].strip() == "and"
            if re.match(r"(?:and|or) ", piece):  # ", and a boiled egg"
                piece, after_and = piece.split(" ", 1)[1], True
            words = piece.split()
            first = words[0].lower()
            if k and first in ("your", "the", "this", "that", "which", "who"):
                continue  # an apposition: "four coins, your whole fortune"
            if first in DETERMINERS or first in NUMBERS:
                np = noun_phrase(piece)
            elif (
                after_and
                and k == len(pieces) - 1
                and len(words) <= 2
                and piece.islower()
                and not re.search(r"(?:ed|ing|ly)$", piece)
            ):
                np = noun_phrase(piece)  # "a wax tablet and stylus."
            else:
                np = None
            if np:
                items.append(np)
    return items


def _objects(obj: str) -> list[str]:
    """'the rope and the lantern' -> ['rope', 'lantern']; 'the key and leave' -> ['key']."""
    found: list[str] = []
    for k, piece in enumerate(re.split(r"\s+and\s+|,\s*", obj)):
        first = piece.strip().split(" ", 1)[0].lower() if piece.strip() else ""
        if k and first not in DETERMINERS and first not in NUMBERS:
            break
        np = noun_phrase(piece)
        if np is None:
            if k == 0:
                return []
            break
        found.append(np)
    return found


# --- reading names ----------------------------------------------------------------------------

_PERSON_CUES = [
    re.compile(rf"(?<![\w.])(?P<name>{NAME})(?:'s)?,? (?:\w+ly )?(?P<verb>{ACTS})\b"),
    re.compile(rf"\b(?:{SPEECH}) (?P<name>{NAME})\b"),
    re.compile(rf"\b(?:{PERSON_NOUNS}) (?:named|called|by the name of) (?P<name>{NAME})"),
    re.compile(rf"(?<![\w.])(?P<name>{TITLE}{CAP}(?: {CAP})?)\b"),
    re.compile(rf"\b(?:her|his|their) name(?: is|'s|’s) (?P<name>{NAME})"),
]
_SELF_INTRO = re.compile(
    rf"\b(?:I am|I'm|I’m|my name is|My name is|name's|name’s|call me|Call me|They call me) "
    rf"(?P<name>{NAME})"
)
_ACTION_PERSON = re.compile(
    rf"^(?:\w+ly )?(?:ask|asks|tell|call|radio|phone|ring|thank|greet|follow|help|give|hand|show|"
    rf"pay|hug|kiss|wake|meet|find|look for|wait for|search for|introduce yourself to|"
    rf"talk to|speak to|shout to|wave to|nod to|bow to|smile at|whisper to|listen to|warn|"
    rf"hail|visit|fetch|trust|shake hands with|say goodbye to|sit with|sit by|kneel by|"
    rf"go to find|go and find|signal|salute|bribe|confront|accuse|question|interrogate|"
    rf"hire|ask for) (?P<name>{NAME})"
)
_PLACE_CUES = [
    re.compile(rf"\b(?:{PLACE_NOUNS}) of (?P<name>{CAP}(?: {CAP})*)"),
    re.compile(
        rf"\b(?:in|into|across|through|enter|enters|entering|arrive at|arrive in|arrives at|"
        rf"arrives in|road to|way to|ride to|rides to|sail to|sails to|the walls of|miles from|"
        rf"miles to|outside|beyond|streets of) (?:the )?(?P<name>{CAP}(?: (?:{CAP}|of|de|la|del))*)"
        rf"(?!['’]s)(?! (?:{ACTS})\b)"
    ),
]
_ACTION_PLACE = re.compile(
    rf"^(?:\w+ly )?(?:go|walk|ride|drive|run|head|travel|sail|fly|climb|return|hurry|flee|"
    rf"cycle|hike|row|march|set out|set off|make your way|take the road|take the train|"
    rf"take a cab|take the bus|take the ferry) (?:back )?(?:to|into|toward|towards|for) "
    rf"(?:the )?(?P<name>{CAP}(?: (?:{CAP}|of))*)(?!['’]s)"
)


_SURE_SPEECH = frozenset(
    word_list("""says said asks asked replies replied answers tells whispers mutters murmurs adds admits
    agrees insists explains repeats announces demands stammers declares continues interrupts
    nods smiles grins laughs shrugs frowns winces""")
)
_LANGUAGE = re.compile(r"(?:ish|ese|ic|ian)$")


def _opens_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip()
    return not before or before[-1] in ".!?…:;"


def _clean_name(name: str) -> str | None:
    name = re.sub(r"['’]s$", "", name.strip()).strip()
    words = name.split()
    while words and words[-1].lower() in ("of", "de", "la", "del"):
        words.pop()
    if not words:
        return None
    plain = [w for w in words if w.rstrip(".").lower() not in TITLE_WORDS]
    if not plain or all(w.lower().strip(".") in NOT_NAMES for w in plain):
        return None
    if words[0].lower() in NOT_NAMES and not (
        len(words) > 1 and words[0].rstrip(".").lower() in TITLE_WORDS
    ):
        return None
    return cut_name(" ".join(words))


def _is_place_name(name: str) -> bool:
    words = name.lower().split()
    return words[-1] in PLACE_WORDS or words[0].rstrip(".") in PLACE_PREFIXES


# --- one turn ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """What one turn says, before it meets the state: read once per (action, response)."""

    adds: tuple[str, ...] = ()
    drops: tuple[str, ...] = ()
    drop_new: bool = False
    """The response drops what this turn picked up ("You drop everything")."""
    people: tuple[str, ...] = ()
    places: tuple[str, ...] = ()
    conditions: tuple[str, ...] = ()
    healed: tuple[str, ...] = ()
    """Words of conditions that end ("the bleeding stops": bleeding)."""


@lru_cache(maxsize=8192)
def observe(action: str, response: str) -> Observation:
    """Read one turn: the objects it adds and drops, the names and conditions it states.
    Cached: deriving a story's state again after an undo or a retry reads each turn once."""
    if action and not re.match(r"you\b", action, re.IGNORECASE):
        # Story text the player wrote ("A bee stings you on the nose."): narration, read as such.
        action, response = "", f"{action} {response}"
    clause = _player_clause_text(action)
    narration = blank_quotes(response)
    adds, drops, drop_new = _read_objects(clause, narration, response)
    people, places = _read_names(clause, narration, response)
    conditions, healed = read_condition(narration, response)
    return Observation(
        adds=tuple(unique(adds)),
        drops=tuple(unique(drops)),
        drop_new=drop_new,
        people=tuple(unique(people)),
        places=tuple(unique(places)),
        conditions=tuple(unique(conditions)),
        healed=tuple(unique(healed)),
    )


def _read_objects(clause: str, narration: str, response: str) -> tuple[list, list, bool]:
    """What the action takes, stores, gives or drops (unless the response refuses it), and
    what the response hands the player or makes them drop."""
    refusal: list[bool] = []

    def refused() -> bool:  # read only for turns that move an object (most do not)
        if not refusal:
            spoken = " ".join(quotes(response))
            refusal.append(bool(REFUSALS.search(narration) or SPOKEN_REFUSALS.search(spoken)))
        return refusal[0]

    adds: list[str] = []
    drops: list[str] = []
    if _INVENTORY_CHECK.search(clause):
        adds += _list_items(response)
    gave = False
    for m in _GIVE_TO.finditer(clause):
        for obj in _objects(m.group("obj")):
            gave = True
            if not refused():
                drops.append(obj)
    for m in _GIVE_WHO.finditer(clause):
        who = m.group("who")
        if who[0].islower() or _clean_name(who):
            for obj in _objects(m.group("obj")):
                gave = True
                if not refused():
                    drops.append(obj)
    if not gave:
        for m in _ADD_RE.finditer(clause):
            verb, obj = m.group("verb").lower(), m.group("obj")
            if verb == "draw" and not obj.lower().startswith(("your", "my")):
                continue  # "draw a circle"
            if verb in ("get", "gets") and re.match(
                r"(?:up|out|in|down|off|away|ready|back)\b", obj, re.I
            ):
                continue
            if re.match(r"(?:off|a look|a breath|aim|cover|hold of)\b", obj, re.I):
                continue
            if not refused():
                adds += _objects(obj)
        for pattern in (_PICK_UP_AFTER, _STORE, _WEAR):
            for m in pattern.finditer(clause):
                if not refused():
                    adds += _objects(m.group("obj"))
        for m in _KEEP_VERBS.finditer(clause):  # "You draw your knife": you had it
            adds += _objects(m.group("obj"))
    stored = set(adds)
    for pattern in (_DROP_RE, _PUT_RE, _PUT_DOWN_AFTER):
        for m in pattern.finditer(clause):
            verb = m.groupdict().get("verb") or ""
            if verb.lower() == "leave" and not re.search(
                r"\b(?:on|in|at|under|behind|by|for|with|beside)\b", m.group("obj")
            ):
                continue  # "leave the room"
            if refused():
                continue
            drops += [obj for obj in _objects(m.group("obj")) if obj not in stored]

    drop_new = False
    for m in _RECEIVED.finditer(narration):
        rest = re.split(r"[.!?]", narration[m.end() :], maxsplit=1)[0]
        if not negated(narration, m.start()) and not REFUSALS.search(rest):
            adds += _objects(m.group("obj"))
    for m in _RESPONSE_TAKE.finditer(narration):
        if not negated(narration, m.start()) and m.group("verb").lower() != "slip":
            adds += _objects(m.group("obj"))
    for m in _RESPONSE_DROP.finditer(narration):
        obj = m.group("obj").strip()
        if negated(narration, m.start()):
            continue
        if obj.lower().startswith(("everything", "it", "them")):
            drop_new = True
        else:
            drops += _objects(obj)
    return adds, drops, drop_new


def _read_names(clause: str, narration: str, response: str) -> tuple[list, list]:
    """The people and places the turn names with a cue."""
    people: list[str] = []
    places: list[str] = []
    for q in quotes(response):
        for pattern in (_SELF_INTRO, *_PERSON_CUES[2:]):  # "I'm Nibsy", "Mrs. Tanner", "named"
            for m in pattern.finditer(q):
                name = _clean_name(m.group("name"))
                if name and not _is_place_name(name):
                    people.append(name)
    for pattern in _PERSON_CUES:
        for m in pattern.finditer(narration):
            name = _clean_name(m.group("name"))
            if not name or _is_place_name(name):
                continue
            verb = m.groupdict().get("verb")
            if (
                verb
                and " " not in name
                and _opens_sentence(narration, m.start())
                and verb.lower() not in _SURE_SPEECH
            ):
                continue  # "Steam rises", "Rain falls": a common word opening a sentence
            people.append(name)
    m = _ACTION_PERSON.match(clause)
    if m:
        name = _clean_name(m.group("name"))
        if name and not _is_place_name(name):
            people.append(name)
    for m in _GIVE_TO.finditer(clause):
        name = _clean_name(m.group("who"))
        if name and m.group("who")[0].isupper():
            people.append(name)
    m = _ACTION_PLACE.match(clause)
    if m:
        name = _clean_name(m.group("name"))
        if name:
            places.append(name)
    for text in (narration, clause):
        for pattern in _PLACE_CUES:
            for m in pattern.finditer(text):
                name = _clean_name(m.group("name"))
                if name and not (" " not in name and _LANGUAGE.search(name.lower())):
                    places.append(name)  # "in Bergen", not "in Elvish"
        for m in re.finditer(rf"(?<![\w.])(?P<name>{CAP}(?: {CAP})*)", text):
            name = _clean_name(m.group("name"))
            if name and _is_place_name(name) and len(name.split()) > 1:
                places.append(name)  # "Deepmere Hold", "Via Solferino"
    places = [p for p in places if not any(same_thing(p, q) for q in people)]
    return people, places
