"""Policies: the policy file, default data classes, suggestions, and the pure planners that decide
what is due (backups, retention, tier moves, RPO status). No I/O besides reading the policy file;
``weightvault.api`` carries the plans out."""
