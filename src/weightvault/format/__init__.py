"""Byte layouts, ids and versions of the repository format. Pure: no I/O. See docs/FORMAT.md."""
