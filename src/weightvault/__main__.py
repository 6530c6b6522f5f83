"""``python -m weightvault``: the command-line interface."""

from weightvault.cli.entry import main

if __name__ == "__main__":
    main()
