"""The command line, python -m flows: one module per group of commands and the error table."""
