"""Test support shipped with the package: backend conformance suite, fault-injecting backends."""
