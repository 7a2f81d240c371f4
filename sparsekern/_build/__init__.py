"""Build-time helpers. setup.py loads these files by path (before the package is built),
so they import nothing from sparsekern and only the standard library at module level."""
