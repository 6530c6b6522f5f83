"""``python -m weightvault``: the command-line interface."""

from weightvault.cli.main import main

if __name__ == "__main__":
    main()
