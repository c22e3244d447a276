"""Masked-LM (and next-sentence) pretraining on fastbert: ``fastbert pretrain`` and its parts.

- :mod:`~fastbert.pretrain.corpus`: text and JSONL corpora tokenized once into a memory-mapped cache;
- :mod:`~fastbert.pretrain.rows`: packing, several documents a row, each attending only to itself;
- :mod:`~fastbert.pretrain.masking`: BERT's 80/10/10 corruption, token- or whole-word-level;
- :mod:`~fastbert.pretrain.head`: the masked-LM head on the masked positions only;
- :mod:`~fastbert.pretrain.task`: masked-LM as a task of the one training loop, and its objective module;
- :mod:`~fastbert.pretrain.nsp`: next-sentence prediction (``--nsp``);
- :mod:`~fastbert.pretrain.cli`: the command line (``python -m fastbert.pretrain`` under torchrun).
"""
