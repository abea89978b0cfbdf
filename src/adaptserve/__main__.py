"""`python -m adaptserve` is the `adaptserve` command."""

from adaptserve.cli import main

main()
