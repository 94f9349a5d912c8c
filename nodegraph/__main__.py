"""`python -m nodegraph run|serve|nodes` (see nodegraph/cli.py)."""

import sys

from nodegraph.cli import main

if __name__ == "__main__":
    sys.exit(main())
