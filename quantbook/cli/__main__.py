"""``python -m quantbook.cli``: the same ``main`` as the installed ``quantbook`` command."""

import sys

from . import main

sys.exit(main())
