"""Masked-LM pretraining on fastbert (``fastbert pretrain``, issue in progress): its parts so far.

- :mod:`~fastbert.pretrain.corpus`: text and JSONL corpora tokenized once into a memory-mapped cache;
- :mod:`~fastbert.pretrain.masking`: BERT's 80/10/10 corruption, token- or whole-word-level;
- :mod:`~fastbert.pretrain.head`: the masked-LM head on the masked positions only.
"""
