"""``python -m polyformers``: the same command as the ``polyformers`` console script."""

import sys

from .cli import main

sys.exit(main())
