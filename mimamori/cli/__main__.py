"""`python -m mimamori.cli`."""

from mimamori.cli import main

main()
