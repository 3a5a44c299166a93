"""`python -m gateway.cli`: the `orchestrator` command."""

import sys

from . import main

sys.exit(main())
