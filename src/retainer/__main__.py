"""`python -m retainer` is the `retainer` command."""

from .cli import main

main()
