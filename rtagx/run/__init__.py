"""Compose the stages into runs: events and summaries, the local executor, tag, retag and untag."""
