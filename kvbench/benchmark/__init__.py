"""Measurement: runs, their incremental records, stability verdicts and the boundary search.

Nothing here formats text for people; `kvbench.output` and `kvbench.export` do.
"""
