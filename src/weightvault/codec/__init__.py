"""Bytes-to-bytes transforms: compression codecs and authenticated encryption."""
