"""``python -m local_reg.experiments``: the ``local-reg`` command line."""

import sys

from .cli import main

sys.exit(main())
