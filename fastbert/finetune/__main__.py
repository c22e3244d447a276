"""``python -m fastbert.finetune`` (and ``torchrun ... -m fastbert.finetune``): see fastbert.finetune.cli."""

import sys

from fastbert.finetune.cli import main

sys.exit(main())
