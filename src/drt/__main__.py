"""``python -m drt`` (also what torchrun launches)."""

import sys

from drt.cli import main

sys.exit(main())
