"""fastbert's benchmarks; each module mirrors the file it measures (``bench_modeling`` -> ``fastbert/modeling.py``)."""

import argparse


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")
