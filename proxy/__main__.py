"""``python -m proxy`` runs the saga-sidecar command line."""

import sys

from proxy.cli import main

sys.exit(main())
