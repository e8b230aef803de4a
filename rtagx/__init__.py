"""rtagx: tag photo libraries with CLIP and write the tags as keywords photo software reads."""

__version__ = "0.1.0"
