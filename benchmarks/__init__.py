"""fastbert's benchmarks; each module mirrors the file it measures (``bench_modeling`` -> ``fastbert/modeling.py``)."""
