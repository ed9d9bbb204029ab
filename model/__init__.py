"""Keras models for openimager: architectures, input pipeline, training and evaluation."""
