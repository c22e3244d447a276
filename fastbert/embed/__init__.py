"""Embedding and scoring whole corpora on fastbert: ``fastbert embed`` and its parts.

- :mod:`~fastbert.embed.inputs`: text files, JSONL, CSV and Parquet, with file:line errors;
- :mod:`~fastbert.embed.encoders`: sentence-transformers folders, pooled encoders and classifiers;
- :mod:`~fastbert.embed.run`: length-sorted chunks, token-budget batches, background tokenization,
  per-chunk part files (resume, torchrun shares) merged in input order;
- :mod:`~fastbert.embed.cli`: the command line (``python -m fastbert.embed`` under torchrun).
"""
