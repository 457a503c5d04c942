"""Decoding and using a model: the n-gram LM decoder, transcription, export."""
