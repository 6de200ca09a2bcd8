"""``python -m gmemlab``."""

from .cli import main

main()
