"""Engine labels: `--backends LABEL=ENGINE[,…]` names each engine a comparison measures, so the
same engine on two machines or with two configurations gets two rows (`h200-trt=trtllm,
mi300-sgl=sglang`); a bare ENGINE is its own label. `--url LABEL=URL` then attaches by label."""

from __future__ import annotations

from kvbench.errors import KvbenchError


def parse_backends(text: str) -> tuple[list[str], dict[str, str]]:
    """The labels in order, and what engine (backend name) each label runs. Labels must be
    unique: two rows called the same could not be told apart in a report."""
    from kvbench.backends.registry import backend_names

    labels: list[str] = []
    engines: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        label, sep, engine = (s.strip() for s in item.partition("="))
        if not sep:
            engine = label
        if not label or not engine:
            raise KvbenchError(f"--backends {item!r}: expected ENGINE or LABEL=ENGINE")
        if engine not in backend_names():
            raise KvbenchError(
                f"--backends {item!r}: unknown engine {engine!r}; choose one of "
                f"{', '.join(backend_names())}"
            )
        if label in engines:
            if not sep and engines[label] == engine:
                raise KvbenchError(
                    f"--backends names {engine} twice; label each, e.g. "
                    f"--backends {engine}-a={engine},{engine}-b={engine}"
                )
            raise KvbenchError(f"--backends: label {label!r} is given twice; labels must differ")
        labels.append(label)
        engines[label] = engine
    return labels, engines
