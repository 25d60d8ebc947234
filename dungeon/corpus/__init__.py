"""Story corpora: what a source holds, which stories are held out, the checker, training data.

- ``dungeon.corpus.sources``: the story files of a folder, its validation lists, and one
  ``--data`` value (``SourceSpec``); the answer the checker, ``dungeon eval`` and fine-tuning
  share.
- ``dungeon.corpus.readers``: a text in any shape (project story file, plain story, transcript,
  prose, a big file of many) as stories in the story format; ``tables``: JSONL, CSV/TSV and
  dataset rows.
- ``dungeon.corpus.loading``: every source of a corpus read, the held-out stories chosen, and
  the statistics fine-tuning and ``dungeon check-corpus`` print.
- ``dungeon.corpus.check``: the checker (``dungeon check-corpus``, in ``command``).
- ``dungeon.corpus.training``: tokenizing and packing for fine-tuning (needs ``datasets``,
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
