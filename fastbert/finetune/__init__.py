"""Fine-tuning BERT-family text classifiers on fastbert: ``fastbert finetune`` and its parts.

- :mod:`~fastbert.finetune.data`: CSV/TSV/JSONL reading with file:line errors, the label map, tokenizing;
- :mod:`~fastbert.finetune.batching`: length-grouped global batches, each process's padded share;
- :mod:`~fastbert.finetune.loop`: the training loop (:class:`FineTuner`), evaluation, checkpoints, resume;
- :mod:`~fastbert.finetune.cli`: the command line; :mod:`~fastbert.finetune.distributed`: torchrun/DDP.
"""

from fastbert.finetune.cli import main, run
from fastbert.finetune.loop import FineTuner, Settings

__all__ = ["FineTuner", "Settings", "main", "run"]
