"""Which model is promoted: the BentoML model store that caches trained models."""
