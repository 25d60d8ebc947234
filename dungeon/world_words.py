"""Words and names for reading the world's state: the word lists, stems and name matching
that dungeon.world_reading and dungeon.world_condition share. Pure functions, no I/O."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

MAX_NAME_CHARS = 60
"""Longer names are cut: an entry is a few words, never a paragraph."""


# --- words ------------------------------------------------------------------------------------


def word_list(text: str) -> list[str]:
    """A word list written as text (easier to read and edit than a list of strings)."""
    return text.split()


DETERMINERS = frozenset(
    word_list("a an the your my some his her their its this that these those our one another own")
)
NUMBERS = frozenset(
    word_list("two three four five six seven eight nine ten eleven twelve twenty dozen")
)
# Words that end an object's noun phrase: prepositions, conjunctions, pronouns, particles.
PHRASE_END = frozenset(
    word_list("""from off out in into on onto at to with and or but then before after while because so
    that which who whom whose up down away back over under through for by as if when where
    inside behind across toward towards around against along beside between near past without
    until is are was were it them him her me you yourself myself here there now again too also
    carefully quickly slowly gently quietly instead half""")
)
# Heads that are not things a player carries (body parts, fixtures, the way, abstractions).
NOT_ITEMS = frozenset(
    word_list("""hand hands arm arms wrist wrists finger fingers shoulder shoulders elbow head hair face
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
WAYS = frozenset(
    word_list("""road path route stair stairs lift elevator way trail tunnel passage corridor shortcut
    home turn lane street""")
)
PLACE_WORDS = frozenset(
    word_list("""street road lane avenue way row alley square plaza market hall hold tower towers station
    bridge river lake sea ocean bay harbour harbor port island isle mountain mountains hill hills
    forest wood woods valley city town village keep castle temple church chapel abbey cathedral
    house manor court park library museum hospital clinic hotel inn tavern pass quarter district
    ward dock docks wharf pier tunnel mine desert marsh fen moor coast cove falls gorge canyon
    fort palace prison academy school college university gardens garden bazaar crossing
    junction terrace heights ridge peak glacier point reach springs well wells mill farm ranch
    creek camp station deck level sector arcade mall""")
)
PLACE_PREFIXES = frozenset(word_list("via mount lake fort port saint st rue isle cape"))
_TITLES = (
    "Mr|Mrs|Ms|Miss|Dr|Doctor|Captain|Capt|Sergeant|Sgt|Lieutenant|Lt|Colonel|General|Lord|"
    "Lady|Sir|Dame|Madame|Madam|Monsieur|Father|Brother|Sister|Aunt|Auntie|Uncle|Gran|Granny|"
    "Grandma|Grandpa|Grandam|King|Queen|Prince|Princess|Professor|Prof|Inspector|Detective|"
    "Officer|Constable|Master|Mistress|Old|Mother|Señor|Señora|Don|Doña|Herr|Frau|Judge|"
    "Sheriff|Deputy|Marshal|Reverend|Rev|Abbot|Elder|Chief|Boss|Nurse|Mayor|Baron|Baroness|"
    "Count|Countess|Duke|Duchess|Emperor|Empress|Saint|St"
)
TITLE_WORDS = frozenset(t.lower() for t in _TITLES.split("|"))
_ABBREVIATED = "Mr|Mrs|Ms|Dr|Capt|Sgt|Lt|Prof|Rev|St"
TITLE = rf"(?:(?:{_ABBREVIATED})\.? |(?:{_TITLES}) )"
"""A title before a name: "Mr. " or "Mr ", "Captain ", never "Duke. " (a sentence end)."""
# Capitalized words that are never names in themselves.
NOT_NAMES = frozenset(
    word_list("""i you he she it we they me him her us them my your his its our their the a an this that
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
BODY = (
    r"hand|hands|arm|arms|forearm|wrist|wrists|finger|fingers|thumb|thumbs|palm|palms|"
    r"shoulder|shoulders|elbow|leg|legs|knee|knees|foot|feet|ankle|ankles|toe|toes|shin|"
    r"thigh|hip|back|ribs|rib|side|chest|stomach|belly|head|face|cheek|cheeks|jaw|lip|lips|"
    r"nose|eye|eyes|ear|ears|neck|throat|skull|scalp|brow|forehead|lungs|heart|heel|heels"
)
COND_ADJ = (
    r"cut|broken|bleeding|burned|burnt|bruised|sprained|twisted|swollen|numb|aching|sore|"
    r"stiff|raw|blistered|frostbitten|scraped|scratched|skinned|grazed|wounded|injured|hurt|"
    r"throbbing|useless|dislocated|stinging|bloody|bloodied|frozen|burning|cracked|gashed|"
    r"bitten|stung|jarred|wrenched|singed|scalded|sliced|slashed|pierced|poisoned|"
    r"lame|bad|swelling|swollen up|blistering"
)
# Adjectives safe without "is": "your left wrist jarred", "your foot bleeding".
SAFE_BARE = frozenset(
    word_list("""bleeding swollen numb sore broken blistered frostbitten skinned jarred sprained
    dislocated aching throbbing stinging useless bloody bloodied""")
)
STATE_WORDS = (
    r"bleeding|hurt|wounded|injured|exhausted|poisoned|sick|ill|feverish|freezing|soaked|"
    r"drenched|dizzy|drunk|starving|famished|blind|blinded|deaf|deafened|limping|shivering|"
    r"burned|burnt|bruised|concussed|winded|weak|tired|nauseous|frozen|soaked through|"
    r"half-frozen|parched|dehydrated|cursed|faint|"
    r"bleeding badly|sweating|infected|hungry|thirsty|weary|spent|worn out"
)
NEGATION = re.compile(
    r"\b(?:not|never|no longer|nothing|no|if|unless|whether|almost|nearly|without)\b|n't",
    re.IGNORECASE,
)

# Responses that refuse a take, a give or a drop: the object stays where it was.
REFUSALS = re.compile(
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
SPOKEN_REFUSALS = re.compile(
    r"\b(?:put (?:it|that|them) (?:back|down)|(?:don't|do not) touch|not yours|leave (?:it|that)|"
    r"you can't take|you cannot take|hands off)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
CAP = r"[A-Z][a-zà-ÿ]+(?:['’-][A-Z][a-zà-ÿ]+)*\b"
NAME = rf"{TITLE}?(?:[A-Z]\. )?{CAP}(?: (?:{CAP}|[A-Z]\.))*"


SPEECH = (
    r"says|said|asks|asked|replies|replied|answers|whispers|mutters|murmurs|shouts|calls|cries|"
    r"yells|snaps|growls|hisses|laughs|chuckles|grins|smiles|nods|sighs|shrugs|frowns|scowls|"
    r"roars|barks|adds|admits|agrees|insists|warns|explains|repeats|breathes|tells|announces|"
    r"demands|pleads|begs|protests|groans|grunts|sniffs|snorts|winces|blinks|gasps|stammers|"
    r"declares|continues|interrupts|squints|beams|scoffs|wails|sobs|weeps|mumbles|drawls"
)
ACTS = (
    SPEECH + r"|looks|stares|watches|glances|turns|leans|reaches|grabs|takes|hands|gives|"
    r"puts|opens|closes|waits|walks|runs|comes|goes|steps|eyes|counts|reads|folds|pulls|pushes|"
    r"catches|casts|lunges|holds|lifts|raises|points|waves|kneels|rises|stands up|sits up|"
    r"gets up|climbs|jumps|sprints|hurries|shakes|claps|hugs|kisses|bows|salutes|spits|"
    r"listens|thinks|knows|wants|hesitates|pauses|stops|starts|tries|swears|cuts|unpins|"
    r"drinks|licks|peers|squeezes|strides|storms|marches|limps|staggers|wakes|sleeps|dies"
)
PERSON_NOUNS = (
    r"man|woman|boy|girl|child|fellow|lad|lass|stranger|merchant|soldier|old man|old woman|"
    r"priest|priestess|guard|sailor|farmer|widow|knight|wizard|witch|dwarf|elf|goblin|giant|"
    r"gentleman|lady|kid|friend|brother|sister|son|daughter|wife|husband|cousin|captain|cat|"
    r"dog|horse|bird|crow|raven|creature|ghost|spirit|robot|android"
)
PLACE_NOUNS = (
    r"city|town|village|port|island|isle|kingdom|county|valley|river|land|province|republic|"
    r"hamlet|realm|country|state|district|planet|moon|world|bar|inn|tavern|pub|ship|station"
)


def blank_quotes(text: str) -> str:
    """Quoted speech replaced by an empty pair, so narration patterns never read dialogue."""
    return _QUOTED.sub('""', text)


def quotes(text: str) -> list[str]:
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


def head_word(name: str) -> str:
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
    drop = TITLE_WORDS | {"of"} if names else frozenset({"of"})
    return norm, frozenset(stem(w) for w in norm.split()) - drop, head_word(name)


def cut_name(name: str) -> str:
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS].rsplit(" ", 1)[0]
    return name


def unique(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        if not any(same_thing(n, o) for o in out):
            out.append(n)
    return out


def same_person(a: str, b: str) -> bool:
    """Whether two names share a name word, titles aside ('Mr. Obi' and 'Benedikt Obi')."""
    mine = {w.lower().rstrip(".") for w in a.split()} - TITLE_WORDS
    theirs = {w.lower().rstrip(".") for w in b.split()} - TITLE_WORDS
    return bool(mine & theirs)


def player_name(premise: str) -> str:
    """The player's name as the premise gives it ("You are Maud Ironside, a dwarf..."), or ""."""
    m = re.search(rf"\bYou are (?P<name>{CAP}(?: {CAP})*)", premise) or re.search(
        rf"(?P<name>{CAP}(?: {CAP})*),? (?:which|who|that) is you\b", premise
    )
    return m.group("name") if m else ""
