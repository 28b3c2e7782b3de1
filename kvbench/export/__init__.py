"""Exporters: one module per output file format."""
