"""weightvault: backup and disaster recovery for AI model data."""

__all__ = ["__version__"]

__version__ = "0.1.0"
