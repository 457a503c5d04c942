"""Contamination: media-noise pools, rooms, the on-the-fly contaminator and the fixed test conditions."""
