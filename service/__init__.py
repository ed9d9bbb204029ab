"""The openimager HTTP classification service."""
