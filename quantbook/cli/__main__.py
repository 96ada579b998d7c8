"""``python -m quantbook.cli``: the same ``main`` as the installed ``quantbook`` command runs
(:mod:`quantbook.console`), imported before it can catch a Ctrl-C: during that import a Ctrl-C
still ends in Python's traceback here."""

import sys

from . import main

sys.exit(main())
