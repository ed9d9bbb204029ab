"""python -m flows: the command line (flows/commands/main.py)."""

import sys

from flows.commands.errors import BAD_INPUT, DEPENDENCY_HINT, missing_dependency_text

try:
    from flows.commands.main import main
except ModuleNotFoundError as error:  # a Python without the project's dependencies
    if "--debug" in sys.argv or (error.name or "").split(".")[0] == "flows":
        raise
    print(f"error: {missing_dependency_text(error)}\n  {DEPENDENCY_HINT}", file=sys.stderr)
    sys.exit(BAD_INPUT)

if __name__ == "__main__":
    sys.exit(main())
