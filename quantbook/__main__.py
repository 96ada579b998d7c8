"""``python -m quantbook``: the installed ``quantbook`` command (:func:`quantbook.console.main`),
for an environment whose scripts directory is not on the PATH."""

import sys

from .console import main

sys.exit(main())
