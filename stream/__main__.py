"""``python -m stream`` runs the ``anomstream`` command line."""

from stream.cli import main

main()
