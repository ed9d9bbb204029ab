"""Open Images data code: ontology, metadata, download and crop (no orchestration here)."""
