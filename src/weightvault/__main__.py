"""``python -m weightvault``: the command-line interface."""

try:
    from weightvault.cli.entry import main
except KeyboardInterrupt:  # Ctrl-C before the entry point could take over: one line, no traceback
    import sys

    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

if __name__ == "__main__":
    main()
