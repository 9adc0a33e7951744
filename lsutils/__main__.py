"""Run the command line: ``python -m lsutils --help``."""

import sys

from lsutils.cli import main

sys.exit(main())
