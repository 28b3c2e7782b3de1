"""Type stub for `kvbench._core`, the Rust extension: the whole Rust surface, documented.

Conventions: times are float64 seconds; lengths are int64 tokens; every random function takes an
explicit `seed` and is reproducible across platforms for a given seed.
"""

__version__: str
