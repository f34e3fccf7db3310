"""``python -m neurosono``: the command line."""

from neurosono.cli import main

main()
