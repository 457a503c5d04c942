"""Data preparation: corpora to manifests, speaker splits, validation, public corpus exporters, units."""
