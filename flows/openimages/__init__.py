"""Open Images data code: ontology, metadata, download and crop (no orchestration here)."""

# Boxes narrower or shorter than this many stored pixels are not cropped: the model resizes
# every crop to its input (150 px by default), so a smaller box would be upscaled more than
# 4.7x, a blur of a few dozen real pixels (docs/training.md). The crop options' default and
# the setting OPENIMAGER_MIN_BOX_PIXELS both take it from here.
MIN_BOX_PIXELS = 32
