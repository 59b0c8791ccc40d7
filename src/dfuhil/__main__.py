"""``python -m dfuhil``: the same command line as the ``dfuhil`` script."""

import sys

from dfuhil.cli import main

sys.exit(main())
