"""``python -m fastbert.pretrain`` (and ``torchrun ... -m fastbert.pretrain``): see fastbert.pretrain.cli."""

import sys

from fastbert.pretrain.cli import main

sys.exit(main())
