"""``python -m fleetql``: the ``fleetql`` command, for images and checkouts without the script."""

import sys

from fleetql.cli import main

sys.exit(main())
