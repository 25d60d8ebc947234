"""Story corpora: which files are stories and which are held out, the checker, training data.

- ``dungeon.corpus.sources``: the stories of a folder and its held-out set (validation lists);
  the one answer the checker, ``dungeon eval`` and fine-tuning share.
- ``dungeon.corpus.check``: ``dungeon check-corpus``, the corpus checker and its statistics.
- ``dungeon.corpus.training``: training data for scripts/finetune.py (needs ``datasets``,
  imported only when a corpus is loaded).

Importing this package imports neither ``datasets`` nor torch.
"""

from dungeon.corpus.sources import (
    VALIDATION_LIST,
    CorpusError,
    CorpusFiles,
    ValidationList,
    find_stories,
    read_validation_list,
)

__all__ = [
    "VALIDATION_LIST",
    "CorpusError",
    "CorpusFiles",
    "ValidationList",
    "find_stories",
    "read_validation_list",
]
