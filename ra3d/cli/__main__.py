"""``python -m ra3d.cli``: the same as the ``ra3d`` console script."""

import sys

from ra3d.cli import main

sys.exit(main())
