"""``python -m imagenette_sota`` = the ``imagenette-sota`` command."""

from imagenette_sota.cli import main

main()
