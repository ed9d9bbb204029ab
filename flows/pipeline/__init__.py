"""The stages as functions of the settings: selection, dataset, training, release, report."""
