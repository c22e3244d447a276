"""Fine-tuning BERT-family models on fastbert: ``fastbert finetune`` and its parts.

- :mod:`~fastbert.finetune.tasks`: the tasks (text classification, token classification, question
  answering), each reading, aligning, collating, its loss and its scores, plugged into the one loop;
- :mod:`~fastbert.finetune.data`: CSV/TSV/JSONL reading with file:line errors, the label map, tokenizing;
- :mod:`~fastbert.finetune.batching`: length-grouped global batches, each process's padded share;
- :mod:`~fastbert.finetune.loop`: the training loop (:class:`FineTuner`), evaluation, checkpoints, resume;
- :mod:`~fastbert.finetune.cli`: the command line; :mod:`~fastbert.finetune.distributed`: torchrun/DDP.

The names below load on first use, so ``fastbert finetune --help`` does not import torch.
"""

from fastbert._lazy import lazy_exports

_EXPORTS = {"main": "fastbert.finetune.cli", "run": "fastbert.finetune.cli",
            "FineTuner": "fastbert.finetune.loop", "Settings": "fastbert.finetune.loop"}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports("fastbert.finetune", _EXPORTS, globals())
