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
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

MAX_NAME_CHARS = 60
"""Longer names are cut: an entry is a few words, never a paragraph."""


# --- words ------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """A word list written as text (easier to read and edit than a list of strings)."""
    return text.split()


_DETERMINERS = frozenset(
    _words("a an the your my some his her their its this that these those our one another own")
)
_NUMBERS = frozenset(
    _words("two three four five six seven eight nine ten eleven twelve twenty dozen")
)
# Words that end an object's noun phrase: prepositions, conjunctions, pronouns, particles.
_PHRASE_END = frozenset(
    _words("""from off out in into on onto at to with and or but then before after while because so
    that which who whom whose up down away back over under through for by as if when where
    inside behind across toward towards around against along beside between near past without
    until is are was were it them him her me you yourself myself here there now again too also
    carefully quickly slowly gently quietly instead half""")
)
# Heads that are not things a player carries (body parts, fixtures, the way, abstractions).
_NOT_ITEMS = frozenset(
    _words("""hand hands arm arms wrist wrists finger fingers shoulder shoulders elbow head hair face
    neck leg legs knee knees foot feet ankle back chest side breath breaths look glance peek step
    steps seat cover aim chance turn moment moments minute second rest nap break lead notes note
    stairs stair staircase steps lift elevator road path paths passage tunnel route way left right
    door doors gate wall walls floor ground ceiling rail railing handrail ledge edge lamppost
    post bars bar strut table shelf counter window corner hold grip position time care advice
    offer job risk trouble shot plunge leap deep dive pulse notice hint stand place places
    photo photograph picture pictures bus train taxi cab ferry boat ship helm wheel reins
    ride rides long short shower bath sip swig bite mouthful gulp drink drinks lot most rest
    man woman men women boy girl boys girls child children kid kids baby people person guard
    guards everyone everything something anything nothing all both each none others other
    him her them it one ones lid cap stopper top bottom inventory supplies stock fortune life
    name names word words vote votes oath money cash change account claim call calls mouth eye
    eyes ear ears lip lips tongue teeth reason excuse idea pull sight reading bearing rim spoke
    spokes handle handles lever pill pills painkiller dose aspirin point grin smile nod wink
    shrug hug kiss stare frown salute answer rung rungs""")
)
_WAYS = frozenset(
    _words("""road path route stair stairs lift elevator way trail tunnel passage corridor shortcut
    home turn lane street""")
)
_PLACE_WORDS = frozenset(
    _words("""street road lane avenue way row alley square plaza market hall hold tower towers station
    bridge river lake sea ocean bay harbour harbor port island isle mountain mountains hill hills
    forest wood woods valley city town village keep castle temple church chapel abbey cathedral
    house manor court park library museum hospital clinic hotel inn tavern pass quarter district
    ward dock docks wharf pier tunnel mine desert marsh fen moor coast cove falls gorge canyon
    fort palace prison academy school college university gardens garden bazaar crossing
    junction terrace heights ridge peak glacier point reach springs well wells mill farm ranch
    creek camp station deck level sector arcade mall""")
)
_PLACE_PREFIXES = frozenset(_words("via mount lake fort port saint st rue isle cape"))
_TITLES = (
    "Mr|Mrs|Ms|Miss|Dr|Doctor|Captain|Capt|Sergeant|Sgt|Lieutenant|Lt|Colonel|General|Lord|"
    "Lady|Sir|Dame|Madame|Madam|Monsieur|Father|Brother|Sister|Aunt|Auntie|Uncle|Gran|Granny|"
    "Grandma|Grandpa|Grandam|King|Queen|Prince|Princess|Professor|Prof|Inspector|Detective|"
    "Officer|Constable|Master|Mistress|Old|Mother|Señor|Señora|Don|Doña|Herr|Frau|Judge|"
    "Sheriff|Deputy|Marshal|Reverend|Rev|Abbot|Elder|Chief|Boss|Nurse|Mayor|Baron|Baroness|"
    "Count|Countess|Duke|Duchess|Emperor|Empress|Saint|St"
)
_TITLE_WORDS = frozenset(t.lower() for t in _TITLES.split("|"))
_ABBREVIATED = "Mr|Mrs|Ms|Dr|Capt|Sgt|Lt|Prof|Rev|St"
_TITLE = rf"(?:(?:{_ABBREVIATED})\.? |(?:{_TITLES}) )"
"""A title before a name: "Mr. " or "Mr ", "Captain ", never "Duke. " (a sentence end)."""
# Capitalized words that are never names in themselves.
_NOT_NAMES = frozenset(
    _words("""i you he she it we they me him her us them my your his its our their the a an this that
    these those there here then but and or so if when what who why how where which yes no not
    okay ok oh ah well everyone someone somebody nobody nothing everything anyone anybody
    something all both each every one none god gods sir madam ma'am mister missus lady lord
    monday tuesday wednesday thursday friday saturday sunday january february march april may
    june july august september october november december english french spanish german latin
    greek italian russian chinese japanese arabic norse common dutch welsh irish scottish
    still just only even now later today tonight tomorrow yesterday outside inside behind
    above below north south east west thank thanks please sorry hello hey hi goodbye good
    let don't can't won't i'm i'll i've you're it's that's what's there's""")
)
_BODY = (
    r"hand|hands|arm|arms|forearm|wrist|wrists|finger|fingers|thumb|thumbs|palm|palms|"
    r"shoulder|shoulders|elbow|leg|legs|knee|knees|foot|feet|ankle|ankles|toe|toes|shin|"
    r"thigh|hip|back|ribs|rib|side|chest|stomach|belly|head|face|cheek|cheeks|jaw|lip|lips|"
    r"nose|eye|eyes|ear|ears|neck|throat|skull|scalp|brow|forehead|lungs|heart|heel|heels"
)
_COND_ADJ = (
    r"cut|broken|bleeding|burned|burnt|bruised|sprained|twisted|swollen|numb|aching|sore|"
    r"stiff|raw|blistered|frostbitten|scraped|scratched|skinned|grazed|wounded|injured|hurt|"
    r"throbbing|useless|dislocated|stinging|bloody|bloodied|frozen|burning|cracked|gashed|"
    r"bitten|stung|jarred|wrenched|singed|scalded|sliced|slashed|pierced|poisoned|"
    r"lame|bad|swelling|swollen up|blistering"
)
# Adjectives safe without "is": "your left wrist jarred", "your foot bleeding".
_SAFE_BARE = frozenset(
    _words("""bleeding swollen numb sore broken blistered frostbitten skinned jarred sprained
    dislocated aching throbbing stinging useless bloody bloodied""")
)
_STATE_WORDS = (
    r"bleeding|hurt|wounded|injured|exhausted|poisoned|sick|ill|feverish|freezing|soaked|"
    r"drenched|dizzy|drunk|starving|famished|blind|blinded|deaf|deafened|limping|shivering|"
    r"burned|burnt|bruised|concussed|winded|weak|tired|nauseous|frozen|soaked through|"
    r"half-frozen|parched|dehydrated|cursed|faint|"
    r"bleeding badly|sweating|infected|hungry|thirsty|weary|spent|worn out"
)
_NEGATION = re.compile(
    r"\b(?:not|never|no longer|nothing|no|if|unless|whether|almost|nearly|without)\b|n't",
    re.IGNORECASE,
)

# Responses that refuse a take, a give or a drop: the object stays where it was.
_REFUSALS = re.compile(
    r"won't budge|will not budge|doesn't budge|does not budge|won't move|will not move|"
    r"doesn't move(?! to)|does not move(?! to)|too heavy|too hot|you can't|you cannot|you could not|"
    r"you couldn't|can't lift|can't reach|out of reach|you fail|won't come|will not come|"
    r"won't let you|will not let you|refuses|snatches it back|pulls it away|bolted|"
    r"nailed down|fixed to|there is no|there's no|there are no|isn't there|is not there|"
    r"nothing there|stops you|slaps your hand|you let go|slips from your|slips out of your|"
    r"you drop it|you drop them|you drop everything|hands it back|gives it back|"
    r"hands them back|gives them back|back to you|won't take it|will not take it|"
    r"doesn't take it|does not take it|pushes it back|shakes (?:his|her|their) head|"
    r"turns it down|declines|already (?:have|carry|hold)|(?:is|are) gone\b",
    re.IGNORECASE,
)

# Said to the player: "Put that back", "That's not yours".
_SPOKEN_REFUSALS = re.compile(
    r"\b(?:put (?:it|that|them) (?:back|down)|(?:don't|do not) touch|not yours|leave (?:it|that)|"
    r"you can't take|you cannot take|hands off)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_CAP = r"[A-Z][a-zà-ÿ]+(?:['’-][A-Z][a-zà-ÿ]+)*\b"
_NAME = rf"{_TITLE}?(?:[A-Z]\. )?{_CAP}(?: (?:{_CAP}|[A-Z]\.))*"


_SPEECH = (
    r"says|said|asks|asked|replies|replied|answers|whispers|mutters|murmurs|shouts|calls|cries|"
    r"yells|snaps|growls|hisses|laughs|chuckles|grins|smiles|nods|sighs|shrugs|frowns|scowls|"
    r"roars|barks|adds|admits|agrees|insists|warns|explains|repeats|breathes|tells|announces|"
    r"demands|pleads|begs|protests|groans|grunts|sniffs|snorts|winces|blinks|gasps|stammers|"
    r"declares|continues|interrupts|squints|beams|scoffs|wails|sobs|weeps|mumbles|drawls"
)
_ACTS = (
    _SPEECH + r"|looks|stares|watches|glances|turns|leans|reaches|grabs|takes|hands|gives|"
    r"puts|opens|closes|waits|walks|runs|comes|goes|steps|eyes|counts|reads|folds|pulls|pushes|"
    r"catches|casts|lunges|holds|lifts|raises|points|waves|kneels|rises|stands up|sits up|"
    r"gets up|climbs|jumps|sprints|hurries|shakes|claps|hugs|kisses|bows|salutes|spits|"
    r"listens|thinks|knows|wants|hesitates|pauses|stops|starts|tries|swears|cuts|unpins|"
    r"drinks|licks|peers|squeezes|strides|storms|marches|limps|staggers|wakes|sleeps|dies"
)
_PERSON_NOUNS = (
    r"man|woman|boy|girl|child|fellow|lad|lass|stranger|merchant|soldier|old man|old woman|"
    r"priest|priestess|guard|sailor|farmer|widow|knight|wizard|witch|dwarf|elf|goblin|giant|"
    r"gentleman|lady|kid|friend|brother|sister|son|daughter|wife|husband|cousin|captain|cat|"
    r"dog|horse|bird|crow|raven|creature|ghost|spirit|robot|android"
)
_PLACE_NOUNS = (
    r"city|town|village|port|island|isle|kingdom|county|valley|river|land|province|republic|"
    r"hamlet|realm|country|state|district|planet|moon|world|bar|inn|tavern|pub|ship|station"
)


def _blank_quotes(text: str) -> str:
    """Quoted speech replaced by an empty pair, so narration patterns never read dialogue."""
    return _QUOTED.sub('""', text)


def _quotes(text: str) -> list[str]:
    return [q[1:-1] for q in _QUOTED.findall(text)]


@lru_cache(maxsize=16384)
def normalize(name: str) -> str:
    """Lower case, punctuation gone, one space between words."""
    return " ".join(re.sub(r"[^\w\s'-]", " ", name.lower()).split())


def stem(word: str) -> str:
    w = word.lower().strip("'’")
    for end, new in (("ies", "y"), ("ves", "f"), ("ses", "s"), ("es", "e"), ("s", "")):
        if w.endswith(end) and len(w) > len(end) + 2:
            return w[: -len(end)] + new
    return w


def _head(name: str) -> str:
    """The noun a phrase is about: 'flask of oil' -> 'flask', 'iron key' -> 'key'."""
    words = normalize(name).split(" of ")[0].split()
    return stem(words[-1]) if words else ""


def same_thing(a: str, b: str, *, names: bool = False) -> bool:
    """Whether two entries are one: the words of one within the other's, and for objects the
    same head noun ('key' and 'iron key', not 'stale loaf' and 'seventh loaf'); for ``names``,
    titles aside ('Brennan' and 'Sergeant Brennan', 'Danny' and 'Danny Orme')."""
    na, wa, ha = _key(a, names)
    nb, wb, hb = _key(b, names)
    if not na or not nb:
        return False
    if na == nb:
        return True
    if not wa or not wb or not (wa <= wb or wb <= wa):
        return False
    return names or ha == hb


@lru_cache(maxsize=16384)
def _key(name: str, names: bool) -> tuple[str, frozenset[str], str]:
    """What ``same_thing`` compares, worked out once per name (states compare names often)."""
    norm = normalize(name)
    drop = _TITLE_WORDS | {"of"} if names else frozenset({"of"})
    return norm, frozenset(stem(w) for w in norm.split()) - drop, _head(name)


def cut_name(name: str) -> str:
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS].rsplit(" ", 1)[0]
    return name


# --- reading objects --------------------------------------------------------------------------


def noun_phrase(text: str) -> str | None:
    """The object at the start of ``text``: 'the heavy iron key from the altar.' -> 'heavy iron
    key'. None when it is no carried thing (a pronoun, a name, a body part, 'a breath')."""
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9'’-]*|[^\sA-Za-z0-9]", text)
    i = 0
    had_det = False
    while i < len(words) and words[i].lower() in _DETERMINERS:
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
            if not out or not nxt or nxt in _DETERMINERS or nxt in _PHRASE_END:
                break
            out.append(w)
            i += 1
            continue
        if low in _PHRASE_END or (low.endswith("ly") and len(low) > 4 and out):
            break
        if out and low in _DETERMINERS:
            break  # "shortbread your wife baked"
        nxt = words[i + 1].lower() if i + 1 < len(words) else ""
        if (
            out
            and low.endswith("ed")
            and len(low) > 4
            and (not nxt or nxt in _PHRASE_END or nxt in _DETERMINERS or not nxt[0].isalnum())
        ):
            break  # "the tin wrapped in cloth"
        if w[0].isupper() and not out and not had_det and low not in _NUMBERS:
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
    head = _head(name)
    if not head or head in _NOT_ITEMS or normalize(name) in _NOT_ITEMS or head.isdigit():
        return None
    if any(stem(w) in _WAYS for w in normalize(name).split()):
        return None  # "the long road home", "the back stairs"
    if out[0].lower() in _NOT_ITEMS and len(out) == 1:
        return None
    return cut_name(name.lower() if not any(c.isupper() for c in name[1:]) else name)


# Verbs that put an object in the player's hands, and ones that take it out.
_TAKE = "|".join(
    sorted(
        _words("""take takes pick_up picks_up grab grabs get gets collect collects pocket pockets snatch
        snatches scoop_up fetch retrieve take_back take_down pull_out take_out draw unsheathe buy
        buys pry prise"""),
        key=len,
        reverse=True,
    )
).replace("_", " ")
_ADD_RE = re.compile(
    rf"(?:^|\band |\bthen |, |; )(?:you )?(?:\w+ly )?(?P<verb>{_TAKE}) (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_PICK_UP_AFTER = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?pick (?P<obj>(?:the|a|an|your|my|some) [^,;.!?]+?) up\b",
    re.IGNORECASE,
)
_KEEP_VERBS = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:use|show|hold up|raise|wield|light|load|"
    r"ready|check|read|consult|wave|brandish|point|clutch|grip|put on|wear|tuck|"
    r"tighten|unwrap|sharpen|strap on|fill|refill|reload|wind|polish) (?P<obj>(?:your|my) [^,;.!?]+)",
    re.IGNORECASE,
)
_STORE = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:put|place|slip|tuck|stuff|stow|hide|drop)"
    r" (?P<obj>[^,;.!?]+?) (?:in|into|inside|under|behind|on|onto) (?:your|my) "
    r"(?:pocket|pockets|bag|pack|backpack|satchel|coat|jacket|belt|boot|boots|sleeve|purse|"
    r"pouch|shirt|apron|rucksack|knapsack|haversack|wallet|vest|waistband|sack|basket|hat)\b",
    re.IGNORECASE,
)
_WEAR = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:put on|pull on|don) (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_DROP_RE = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?P<verb>throw away|hand over|hand in|give up|"
    r"put down|set down|lay down|pour out|drop|drops|discard|leave|throws|throw|tosses|toss|"
    r"hurl|fling|eats|eat|sells|sell|bury|burn|plant|feed|spend)"
    r" (?P<obj>[^,;.!?]+)",
    re.IGNORECASE,
)
_PUT_RE = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:put|place|set|lay|hang|stand|prop|wedge|"
    r"slide|insert|push|jam|leave) (?P<obj>[^,;.!?]+?) (?:in|into|on|onto|under|inside|"
    r"behind|beside|against|through|down)\b(?! (?:your|my)\b)",
    re.IGNORECASE,
)
_PUT_DOWN_AFTER = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:put|set|lay) (?P<obj>(?:the|a|an|your|my) [^,;.!?]+?) down\b",
    re.IGNORECASE,
)
_GIVE_TO = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:give|gives|hand|hands|pass|passes|throw|"
    r"toss|sell|slide|return|take|bring|deliver|lend|trade) (?P<obj>[^,;.!?]+?) (?:back )?"
    rf"to (?P<who>{_NAME}|him|her|them|(?:the|your) (?:[a-z]+ )?(?:{_PERSON_NOUNS}))\b",
)
_GIVE_WHO = re.compile(
    r"(?:^|\band |\bthen |, )(?:you )?(?:\w+ly )?(?:give|gives|hand|hands|pass|passes|toss|"
    r"sell|lend|bring|throw) "
    rf"(?P<who>{_NAME}|him|her|them|(?:the|your) (?:[a-z]+ )?(?:{_PERSON_NOUNS})) "
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
    text = _blank_quotes(action).strip()
    return re.sub(r"^you\s+", "", text, flags=re.IGNORECASE)


def _list_items(response: str) -> list[str]:
    """The objects an inventory listing names: 'A lantern with oil. A coil of rope.'"""
    items: list[str] = []
    for sentence in re.split(r"(?<=[.!?;:])\s+", _blank_quotes(response)):
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
            if first in _DETERMINERS or first in _NUMBERS:
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
        if k and first not in _DETERMINERS and first not in _NUMBERS:
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
    re.compile(rf"(?<![\w.])(?P<name>{_NAME})(?:'s)?,? (?:\w+ly )?(?P<verb>{_ACTS})\b"),
    re.compile(rf"\b(?:{_SPEECH}) (?P<name>{_NAME})\b"),
    re.compile(rf"\b(?:{_PERSON_NOUNS}) (?:named|called|by the name of) (?P<name>{_NAME})"),
    re.compile(rf"(?<![\w.])(?P<name>{_TITLE}{_CAP}(?: {_CAP})?)\b"),
    re.compile(rf"\b(?:her|his|their) name(?: is|'s|’s) (?P<name>{_NAME})"),
]
_SELF_INTRO = re.compile(
    rf"\b(?:I am|I'm|I’m|my name is|My name is|name's|name’s|call me|Call me|They call me) "
    rf"(?P<name>{_NAME})"
)
_ACTION_PERSON = re.compile(
    rf"^(?:\w+ly )?(?:ask|asks|tell|call|radio|phone|ring|thank|greet|follow|help|give|hand|show|"
    rf"pay|hug|kiss|wake|meet|find|look for|wait for|search for|introduce yourself to|"
    rf"talk to|speak to|shout to|wave to|nod to|bow to|smile at|whisper to|listen to|warn|"
    rf"hail|visit|fetch|trust|shake hands with|say goodbye to|sit with|sit by|kneel by|"
    rf"go to find|go and find|signal|salute|bribe|confront|accuse|question|interrogate|"
    rf"hire|ask for) (?P<name>{_NAME})"
)
_PLACE_CUES = [
    re.compile(rf"\b(?:{_PLACE_NOUNS}) of (?P<name>{_CAP}(?: {_CAP})*)"),
    re.compile(
        rf"\b(?:in|into|across|through|enter|enters|entering|arrive at|arrive in|arrives at|"
        rf"arrives in|road to|way to|ride to|rides to|sail to|sails to|the walls of|miles from|"
        rf"miles to|outside|beyond|streets of) (?:the )?(?P<name>{_CAP}(?: (?:{_CAP}|of|de|la|del))*)"
        rf"(?!['’]s)(?! (?:{_ACTS})\b)"
    ),
]
_ACTION_PLACE = re.compile(
    rf"^(?:\w+ly )?(?:go|walk|ride|drive|run|head|travel|sail|fly|climb|return|hurry|flee|"
    rf"cycle|hike|row|march|set out|set off|make your way|take the road|take the train|"
    rf"take a cab|take the bus|take the ferry) (?:back )?(?:to|into|toward|towards|for) "
    rf"(?:the )?(?P<name>{_CAP}(?: (?:{_CAP}|of))*)(?!['’]s)"
)


_SURE_SPEECH = frozenset(
    _words("""says said asks asked replies replied answers tells whispers mutters murmurs adds admits
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
    plain = [w for w in words if w.rstrip(".").lower() not in _TITLE_WORDS]
    if not plain or all(w.lower().strip(".") in _NOT_NAMES for w in plain):
        return None
    if words[0].lower() in _NOT_NAMES and not (
        len(words) > 1 and words[0].rstrip(".").lower() in _TITLE_WORDS
    ):
        return None
    return cut_name(" ".join(words))


def _is_place_name(name: str) -> bool:
    words = name.lower().split()
    return words[-1] in _PLACE_WORDS or words[0].rstrip(".") in _PLACE_PREFIXES


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
        rf"\byour {_SIDE}(?P<body>{_BODY}) (?:is|are|feels?|looks?|seems?|has gone|have gone|"
        rf"goes|go)(?: {_ADV})? ?(?P<adj>{_COND_ADJ})\b",
        re.IGNORECASE,
    ),
    # "your left wrist jarred", "your foot bleeding"
    re.compile(
        rf"\byour {_SIDE}(?P<body>{_BODY}) (?P<adj>{'|'.join(sorted(_SAFE_BARE))})\b",
        re.IGNORECASE,
    ),
    # "your bad arm", "your raw, bleeding arm"
    re.compile(rf"\byour (?:\w+, )?(?P<adj>{_COND_ADJ}) {_SIDE}(?P<body>{_BODY})\b", re.IGNORECASE),
]
_COND_SELF = re.compile(
    rf"\byou(?:'re|’re| are| feel| look| seem| are now| feel very| feel suddenly)"
    rf"(?: {_ADV})? ?(?P<adj>{_STATE_WORDS})\b",
    re.IGNORECASE,
)
_COND_DONE = re.compile(
    rf"\byou (?P<verb>{'|'.join(_PARTICIPLE)}) your (?:own )?{_SIDE}(?P<body>{_BODY})\b",
    re.IGNORECASE,
)
_COND_VERB = re.compile(
    rf"\byour {_SIDE}(?P<body>{_BODY}) (?:\w+ly )?(?P<verb>{'|'.join(_VERB_TO_ADJ)})\b",
    re.IGNORECASE,
)
_COND_HIT = re.compile(
    rf"\b(?P<verb>{'|'.join(sorted(_HIT, key=len, reverse=True))}) your (?:own )?{_SIDE}"
    rf"(?P<body>{_BODY})\b",
    re.IGNORECASE,
)
# "stings you on the tip of the nose", "bites you on the left ankle"
_COND_HIT_YOU = re.compile(
    rf"\b(?P<verb>stings|bites|hits|strikes|cuts|burns|catches|kicks|scratches|slashes) you "
    rf"(?:on|in|across) (?:the |your )?(?:tip of (?:the|your) |back of (?:the|your) )?{_SIDE}"
    rf"(?P<body>{_BODY})\b",
    re.IGNORECASE,
)
_HIT_YOU = {"stings": "stung", "bites": "bitten", "cuts": "cut", "burns": "burned",
            "scratches": "scratched", "slashes": "cut"}  # fmt: skip
# "sinks its fangs into your left heel", "an arrow lodges in your thigh"
_COND_INTO = re.compile(
    rf"\b(?P<what>fangs|teeth|claws|blade|knife|arrow|bolt|bullet|splinter|thorn|nail|spike|"
    rf"dagger|sword|shard|needle|stinger)\b[^.!?]{{0,40}}?\b(?:into|in) your {_SIDE}"
    rf"(?P<body>{_BODY})\b",
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


def _negated(text: str, start: int) -> bool:
    """Whether the clause before ``start`` negates or hedges what follows."""
    clause = re.split(r"[.!?;,]|\bbut\b", text[max(0, start - 60) : start])[-1]
    return _NEGATION.search(clause) is not None


def _body_name(m: re.Match, adj: str) -> str:
    side = m.group("side")
    body = m.group("body").lower()
    return " ".join(w for w in (adj.lower(), side.lower() if side else "", body) if w)


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
    narration = _blank_quotes(response)
    adds, drops, drop_new = _read_objects(clause, narration, response)
    people, places = _read_names(clause, narration, response)
    conditions, healed = _read_condition(narration, response)
    return Observation(
        adds=tuple(_unique(adds)),
        drops=tuple(_unique(drops)),
        drop_new=drop_new,
        people=tuple(_unique(people)),
        places=tuple(_unique(places)),
        conditions=tuple(_unique(conditions)),
        healed=tuple(_unique(healed)),
    )


def _read_objects(clause: str, narration: str, response: str) -> tuple[list, list, bool]:
    """What the action takes, stores, gives or drops (unless the response refuses it), and
    what the response hands the player or makes them drop."""
    refusal: list[bool] = []

    def refused() -> bool:  # read only for turns that move an object (most do not)
        if not refusal:
            spoken = " ".join(_quotes(response))
            refusal.append(bool(_REFUSALS.search(narration) or _SPOKEN_REFUSALS.search(spoken)))
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
        if not _negated(narration, m.start()) and not _REFUSALS.search(rest):
            adds += _objects(m.group("obj"))
    for m in _RESPONSE_TAKE.finditer(narration):
        if not _negated(narration, m.start()) and m.group("verb").lower() != "slip":
            adds += _objects(m.group("obj"))
    for m in _RESPONSE_DROP.finditer(narration):
        obj = m.group("obj").strip()
        if _negated(narration, m.start()):
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
    for q in _quotes(response):
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
        for m in re.finditer(rf"(?<![\w.])(?P<name>{_CAP}(?: {_CAP})*)", text):
            name = _clean_name(m.group("name"))
            if name and _is_place_name(name) and len(name.split()) > 1:
                places.append(name)  # "Deepmere Hold", "Via Solferino"
    places = [p for p in places if not any(same_thing(p, q) for q in people)]
    return people, places


def _read_condition(narration: str, response: str) -> tuple[list, list]:
    """The player's wounds, illness and exhaustion the turn states, and what heals."""
    conditions: list[str] = []
    healed: list[str] = []
    for pattern in _COND_PATTERNS:
        for m in pattern.finditer(narration):
            if not _negated(narration, m.start()):
                conditions.append(_body_name(m, m.group("adj")))
    for q in _quotes(response):  # told to the player: "Uncle Elias, your face is bleeding."
        for m in _COND_PATTERNS[0].finditer(q):
            if not _negated(q, m.start()):
                conditions.append(_body_name(m, m.group("adj")))
    for pattern, words in (
        (_COND_DONE, _PARTICIPLE),
        (_COND_VERB, _VERB_TO_ADJ),
        (_COND_HIT, _HIT),
    ):
        for m in pattern.finditer(narration):
            if not _negated(narration, m.start()):
                conditions.append(_body_name(m, words[m.group("verb").lower()]))
    for m in _COND_HIT_YOU.finditer(narration):
        if not _negated(narration, m.start()):
            conditions.append(_body_name(m, _HIT_YOU.get(m.group("verb").lower(), "hurt")))
    for m in _COND_INTO.finditer(narration):
        if not _negated(narration, m.start()):
            bite = m.group("what").lower() in ("fangs", "teeth")
            conditions.append(_body_name(m, "bitten" if bite else "wounded"))
    for m in _COND_SELF.finditer(narration):
        if not _negated(narration, m.start()):
            conditions.append(m.group("adj").lower())
    for m in _HEALED.finditer(narration):
        if _negated(narration, m.start()):
            continue
        if m.group("what"):
            healed.append(m.group("what").lower())
        elif m.group("better"):
            healed.extend(sorted(_RESTED))
        elif m.group("healed"):
            healed.append(m.group("healed").lower())
    return conditions, healed


def _unique(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if not any(same_thing(n, o) for o in out):
            out.append(n)
    return out


def same_person(a: str, b: str) -> bool:
    """Whether two names share a name word, titles aside ('Mr. Obi' and 'Benedikt Obi')."""
    mine = {w.lower().rstrip(".") for w in a.split()} - _TITLE_WORDS
    theirs = {w.lower().rstrip(".") for w in b.split()} - _TITLE_WORDS
    return bool(mine & theirs)


def player_name(premise: str) -> str:
    """The player's name as the premise gives it ("You are Maud Ironside, a dwarf..."), or ""."""
    m = re.search(rf"\bYou are (?P<name>{_CAP}(?: {_CAP})*)", premise) or re.search(
        rf"(?P<name>{_CAP}(?: {_CAP})*),? (?:which|who|that) is you\b", premise
    )
    return m.group("name") if m else ""
