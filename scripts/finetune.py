#!/usr/bin/env python
"""Fine-tune GPT-2 or any causal LM on adventure stories: LoRA or full, one process or many.

    python scripts/finetune.py                                  # LoRA on smollm2-135m, stories/
    python scripts/finetune.py --data my-stories/ --data big.txt:2   # your corpus, any shape
    python scripts/finetune.py --base gpt2 --full --output runs/gpt2-full
    python scripts/finetune.py --max-steps 20 --block-size 128  # a smoke run
    python scripts/finetune.py --output runs/adventure --resume # go on after a stop or a crash
    accelerate launch scripts/finetune.py ...                   # the same script under accelerate
    accelerate launch --config_file configs/accelerate/ddp.yaml scripts/finetune.py --full ...
    torchrun --nproc_per_node 2 scripts/finetune.py ...         # data-parallel on CPUs (gloo)

The run itself is dungeon/training/finetune.py, read top to bottom: settings, checks, corpus,
model, the loop, the model folder. ``dungeon finetune`` (on PATH after ``pip install``) runs
the same code with the same arguments; this file keeps every command of the docs working from
a checkout. See docs/finetune.md.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from dungeon.training.finetune import main  # noqa: E402

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("finetune: interrupted", file=sys.stderr)
        sys.exit(130)
