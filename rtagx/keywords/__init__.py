"""Read and write keywords: IPTC, XMP, sidecars, captions, ownership, atomic replacement."""
