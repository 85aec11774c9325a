"""``python -m mvcustom_core.customization``: see :mod:`mvcustom_core.customization.cli`."""

import sys

from mvcustom_core.customization.cli import main

if __name__ == "__main__":
    sys.exit(main())
