"""``dungeon eval``: how good is a model at being a text adventure?

For any model, adapter or base:

1. Held-out perplexity of the validation stories, the fixed list and the new one
   (``perplexity``: the text exactly as play shows it to the model).
2. Scripted playtests through the Game API (``dungeon/playtests/``): every turn records
   impersonation, empty responses, unfinished sentences, loops, second-person slips, distinct-2
   and latency (``measures``).
3. Action adherence of every "do" and "say" turn, scored by a fixed judge (``adherence``).
4. Continuity probes: scripts where an early turn establishes a fact and a later response is
   checked for it (``continuity``).

The modules: ``measures`` (per-turn measures, the summary), ``playtests`` (load, play, rescore),
``adherence``, ``continuity``, ``perplexity`` and ``command`` (the command line). See
docs/eval.md for what each figure means and how to reproduce the README's.
"""

from dungeon.evaluation.adherence import adherence, mean_logprob, other_action
from dungeon.evaluation.continuity import Check, CheckResult, ProbeResult, check_response
from dungeon.evaluation.measures import (
    PlaytestResult,
    TurnRecord,
    distinct_2,
    impersonates,
    incomplete,
    measure_turn,
    second_person_slip,
)
from dungeon.evaluation.perplexity import (
    PERPLEXITY_WINDOW,
    held_out_texts,
    perplexity,
    validation_texts,
)
from dungeon.evaluation.playtests import Playtest, load_playtests, rescore, run_playtests

__all__ = [
    "PERPLEXITY_WINDOW",
    "Check",
    "CheckResult",
    "Playtest",
    "PlaytestResult",
    "ProbeResult",
    "TurnRecord",
    "adherence",
    "check_response",
    "distinct_2",
    "held_out_texts",
    "impersonates",
    "incomplete",
    "load_playtests",
    "mean_logprob",
    "measure_turn",
    "other_action",
    "perplexity",
    "rescore",
    "run_playtests",
    "second_person_slip",
    "validation_texts",
]
