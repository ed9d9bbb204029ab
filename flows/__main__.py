"""python -m flows: the command line (flows/commands/main.py)."""

import sys

from flows.commands.main import main

if __name__ == "__main__":
    sys.exit(main())
