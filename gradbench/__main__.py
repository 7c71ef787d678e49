"""``python -m gradbench``: the command line (see :mod:`gradbench.cli`)."""

import sys

from gradbench.cli import main

sys.exit(main())
