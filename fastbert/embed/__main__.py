"""``python -m fastbert.embed`` (and ``torchrun ... -m fastbert.embed``): see fastbert.embed.cli."""

import sys

from fastbert.embed.cli import main

sys.exit(main())
