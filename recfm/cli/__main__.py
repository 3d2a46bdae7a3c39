"""``python -m recfm.cli …`` = ``recfm …``."""

from recfm.cli import main

main()
