"""Vocabularies, prompts and scoring: vectors in, chosen tags out."""
