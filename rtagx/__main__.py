"""``python -m rtagx`` runs the command-line tool."""

from rtagx.cli.commands import main

if __name__ == "__main__":
    main()
