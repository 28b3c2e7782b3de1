"""TEMPORARY stand-in (compare-try only) until the stability branch lands the registry."""
from kvbench.backends.sim import SimBackend
from kvbench.errors import KvbenchError
from kvbench.profile import build_profile


def resolve_backend(name: str, **options):
    if name.startswith("sim:"):
        return SimBackend(build_profile(name[4:]), replicas=options.get("replicas", 1),
                          seed=options.get("seed", 0))
    from kvbench.backends.engines import open_engine
    return open_engine(name, url=options.get("url"), model=options.get("model"),
                       seed=options.get("seed", 0))
