"""`python -m autoshrink.cli`, the same as `python -m autoshrink` and the `autoshrink` script."""

import sys

from autoshrink.cli import main

sys.exit(main())
