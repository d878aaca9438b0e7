"""`python -m qbq` runs the command line."""

from qbq.cli import main

main()
