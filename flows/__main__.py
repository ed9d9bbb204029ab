"""python -m flows: the command line (flows/commands/main.py)."""

import sys

from flows.commands.errors import start

if __name__ == "__main__":
    sys.exit(start())
