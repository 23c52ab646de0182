"""``python -m wsi_mil``: the same command line as ``wsi-mil``."""

import sys

from wsi_mil.cli import main

sys.exit(main())
