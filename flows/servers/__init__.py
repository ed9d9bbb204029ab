"""Servers for local use (the embedded S3 registry, the metadata mirror, bentoml serve)."""
