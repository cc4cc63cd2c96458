"""``python -m training.import_real``: see :mod:`training.import_real`."""

import sys

from training.import_real.cli import main

sys.exit(main())
