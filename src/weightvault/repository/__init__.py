"""The engine: configuration, keys, packs, index, snapshots, manifests and locks."""
