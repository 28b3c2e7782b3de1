"""Compare reports as data: the raw files a compare wrote (kvbench.benchmark.raw), read back
into one validated result (build, schema) with its tables (table, system); kvbench.export
writes it in each format."""
