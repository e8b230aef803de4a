"""The vector cache: the only package that runs SQL (schema, migrations, lock, fingerprints, vectors)."""
