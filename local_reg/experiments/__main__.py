"""``python -m local_reg.experiments``: the ``local-reg`` command line."""

import sys

from . import main

sys.exit(main())
