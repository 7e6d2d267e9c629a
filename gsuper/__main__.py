"""`python -m gsuper` is the gsuper command."""

import sys

from gsuper.cli import main

sys.exit(main())
