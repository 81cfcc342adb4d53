"""python -m services.cli: the crmsync command."""

from services.cli.main import main

main()
