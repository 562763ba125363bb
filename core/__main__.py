"""`python -m core <command>`: the headless CLI."""

import sys

from core.cli import main

if __name__ == "__main__":
    sys.exit(main())
