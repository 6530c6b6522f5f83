"""The command-line interface: one module per command, using only weightvault.api."""
