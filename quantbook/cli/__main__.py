"""``python -m quantbook.cli``: the same ``main`` as the installed ``quantbook`` command runs.
The package imports nothing heavy, so a Ctrl-C while the commands load (numpy, the registry)
reaches :func:`quantbook.cli.main`, which answers it."""

import sys

from . import main

sys.exit(main())
