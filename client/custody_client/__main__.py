"""`python -m custody_client` runs the `custody` command."""

import sys

from custody_client.cli import main

sys.exit(main())
