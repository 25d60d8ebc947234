"""Reading the player's condition from a turn ("your hand is cut", "you are bleeding"): the
patterns dungeon.world_reading.observe uses. Pure functions, no I/O."""

from __future__ import annotations

import re

from dungeon.world_words import (
    BODY,
    COND_ADJ,
    NEGATION,
    SAFE_BARE,
    STATE_WORDS,
    quotes,
)

# --- reading the player's condition -----------------------------------------------------------

_PARTICIPLE = {
    "cut": "cut",
    "burn": "burned",
    "twist": "twisted",
    "sprain": "sprained",
    "break": "broken",
    "bruise": "bruised",
    "hurt": "hurt",
    "scrape": "scraped",
    "skin": "skinned",
    "graze": "grazed",
    "wrench": "wrenched",
    "jar": "jarred",
    "bang": "bruised",
    "stub": "stubbed",
    "injure": "injured",
    "scald": "scalded",
    "slice": "cut",
    "gash": "gashed",
    "crack": "cracked",
    "singe": "singed",
    "prick": "pricked",
    "stab": "stabbed",
    "bite": "bitten",
}
_VERB_TO_ADJ = {
    "aches": "aching",
    "hurts": "hurt",
    "throbs": "throbbing",
    "bleeds": "bleeding",
    "stings": "stinging",
    "burns": "burning",
    "twists": "twisted",
    "buckles": "weak",
    "gives way": "weak",
    "snaps": "broken",
    "cracks": "cracked",
    "pops": "twisted",
    "swells": "swollen",
    "goes numb": "numb",
}
_HIT = {
    "hit": "hurt",
    "hits": "hurt",
    "strikes": "hurt",
    "struck": "hurt",
    "catches": "hurt",
    "whips across": "hurt",
    "whips back across": "hurt",
    "slams into": "hurt",
    "cuts": "cut",
    "slashes": "cut",
    "bites": "bitten",
    "stings": "stung",
    "burns": "burned",
    "hurts": "hurt",
    "grazes": "grazed",
    "scrapes": "scraped",
    "pierces": "wounded",
    "sears": "burned",
    "scalds": "scalded",
    "scorches": "burned",
    "sticking out of": "wounded",
    "sticks out of": "wounded",
    "jutting from": "wounded",
    "lodged in": "wounded",
}
_SIDE = r"(?:(?P<side>left|right|lower|upper) )?"
_ADV = r"(?:(?:\w+ly|still|now|badly|very|so|too|all|already|a little|slightly|) ?)"
_COND_PATTERNS = [
    # "Your left hand is cut", "your fingers are too numb"
    re.compile(
        rf"\byour {_SIDE}(?P<body>{BODY}) (?:is|are|feels?|looks?|seems?|has gone|have gone|"
        rf"goes|go)(?: {_ADV})? ?(?P<adj>{COND_ADJ})\b",
        re.IGNORECASE,
    ),
    # "your left wrist jarred", "your foot bleeding"
    re.compile(
        rf"\byour {_SIDE}(?P<body>{BODY}) (?P<adj>{'|'.join(sorted(SAFE_BARE))})\b",
        re.IGNORECASE,
    ),
    # "your bad arm", "your raw, bleeding arm"
    re.compile(rf"\byour (?:\w+, )?(?P<adj>{COND_ADJ}) {_SIDE}(?P<body>{BODY})\b", re.IGNORECASE),
]
_COND_SELF = re.compile(
    rf"\byou(?:'re|’re| are| feel| look| seem| are now| feel very| feel suddenly)"
    rf"(?: {_ADV})? ?(?P<adj>{STATE_WORDS})\b",
    re.IGNORECASE,
)
_COND_DONE = re.compile(
    rf"\byou (?P<verb>{'|'.join(_PARTICIPLE)}) your (?:own )?{_SIDE}(?P<body>{BODY})\b",
    re.IGNORECASE,
)
_COND_VERB = re.compile(
    rf"\byour {_SIDE}(?P<body>{BODY}) (?:\w+ly )?(?P<verb>{'|'.join(_VERB_TO_ADJ)})\b",
    re.IGNORECASE,
)
_COND_HIT = re.compile(
    rf"\b(?P<verb>{'|'.join(sorted(_HIT, key=len, reverse=True))}) your (?:own )?{_SIDE}"
    rf"(?P<body>{BODY})\b",
    re.IGNORECASE,
)
# "stings you on the tip of the nose", "bites you on the left ankle"
_COND_HIT_YOU = re.compile(
    rf"\b(?P<verb>stings|bites|hits|strikes|cuts|burns|catches|kicks|scratches|slashes) you "
    rf"(?:on|in|across) (?:the |your )?(?:tip of (?:the|your) |back of (?:the|your) )?{_SIDE}"
    rf"(?P<body>{BODY})\b",
    re.IGNORECASE,
)
_HIT_YOU = {"stings": "stung", "bites": "bitten", "cuts": "cut", "burns": "burned",
            "scratches": "scratched", "slashes": "cut"}  # fmt: skip
# "sinks its fangs into your left heel", "an arrow lodges in your thigh"
_COND_INTO = re.compile(
    rf"\b(?P<what>fangs|teeth|claws|blade|knife|arrow|bolt|bullet|splinter|thorn|nail|spike|"
    rf"dagger|sword|shard|needle|stinger)\b[^.!?]{{0,40}}?\b(?:into|in) your {_SIDE}"
    rf"(?P<body>{BODY})\b",
    re.IGNORECASE,
)
_HEALED = re.compile(
    r"\b(?:the |your )?(?P<what>bleeding|pain|swelling|fever|dizziness|numbness|nausea|"
    r"cough|ache|aching|shivering|shaking|exhaustion)(?: in your (?P<body>\w+))? "
    r"(?:stops|has stopped|eases|fades|passes|goes|is gone|subsides|breaks|lifts)\b"
    r"|\byou feel (?P<better>better|fine|rested|stronger|warm again|well again|yourself again)\b"
    r"|\byour (?P<healed>\w+) (?:heals|has healed|is healed|is better|feels better)\b",
    re.IGNORECASE,
)
_RESTED = {"exhausted", "tired", "weary", "spent", "worn out", "weak", "faint", "dizzy",
           "freezing", "shivering", "cold", "hungry", "thirsty", "starving", "famished",
           "parched", "dehydrated", "feverish", "sick", "ill", "nauseous", "soaked",
           "drenched", "frozen", "half-frozen"}  # fmt: skip


def negated(text: str, start: int) -> bool:
    """Whether the clause before ``start`` negates or hedges what follows."""
    clause = re.split(r"[.!?;,]|\bbut\b", text[max(0, start - 60) : start])[-1]
    return NEGATION.search(clause) is not None


def _body_name(m: re.Match, adj: str) -> str:
    side = m.group("side")
    body = m.group("body").lower()
    return " ".join(w for w in (adj.lower(), side.lower() if side else "", body) if w)


def read_condition(narration: str, response: str) -> tuple[list, list]:
    """The player's wounds, illness and exhaustion the turn states, and what heals."""
    conditions: list[str] = []
    healed: list[str] = []
    for pattern in _COND_PATTERNS:
        for m in pattern.finditer(narration):
            if not negated(narration, m.start()):
                conditions.append(_body_name(m, m.group("adj")))
    for q in quotes(response):  # told to the player: "Uncle Elias, your face is bleeding."
        for m in _COND_PATTERNS[0].finditer(q):
            if not negated(q, m.start()):
                conditions.append(_body_name(m, m.group("adj")))
    for pattern, words in (
        (_COND_DONE, _PARTICIPLE),
        (_COND_VERB, _VERB_TO_ADJ),
        (_COND_HIT, _HIT),
    ):
        for m in pattern.finditer(narration):
            if not negated(narration, m.start()):
                conditions.append(_body_name(m, words[m.group("verb").lower()]))
    for m in _COND_HIT_YOU.finditer(narration):
        if not negated(narration, m.start()):
            conditions.append(_body_name(m, _HIT_YOU.get(m.group("verb").lower(), "hurt")))
    for m in _COND_INTO.finditer(narration):
        if not negated(narration, m.start()):
            bite = m.group("what").lower() in ("fangs", "teeth")
            conditions.append(_body_name(m, "bitten" if bite else "wounded"))
    for m in _COND_SELF.finditer(narration):
        if not negated(narration, m.start()):
            conditions.append(m.group("adj").lower())
    for m in _HEALED.finditer(narration):
        if negated(narration, m.start()):
            continue
        if m.group("what"):
            healed.append(m.group("what").lower())
        elif m.group("better"):
            healed.extend(sorted(_RESTED))
        elif m.group("healed"):
            healed.append(m.group("healed").lower())
    return conditions, healed
