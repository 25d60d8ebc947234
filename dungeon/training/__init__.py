"""Fine-tuning: ``dungeon finetune`` and scripts/finetune.py run dungeon.training.finetune.

- ``finetune``: the run, top to bottom (``main(argv)``);
- ``settings``: the Settings dataclass and the command line built from it (no torch);
- ``checks``: every input checked before anything trains;
- ``build``: accelerator, precision, data loaders, model and LoRA, schedule;
- ``state``: the loop's state, evaluation, samples and checkpoints;
- ``output``: the model folder, dungeon.json, model card and loss curve.

Importing this package imports nothing heavy; its modules other than ``settings`` import torch.
"""
