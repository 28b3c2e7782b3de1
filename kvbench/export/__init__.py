"""Machine-readable output, one module per file format."""
