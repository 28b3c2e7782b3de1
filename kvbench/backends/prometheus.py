"""Prometheus text exposition, parsed with prometheus-client's own parser.

Engines differ in how a counter appears: the family is registered without `_total` while its
sample carries it (vLLM's `vllm:num_preemptions` → `vllm:num_preemptions_total`), and gateways
re-export `sglang:` names as `sglang_`. Lookups therefore go by sample name and accept several
spellings, first match wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from kvbench.errors import KvbenchError


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class Metrics:
    """Samples of one scrape, indexed by sample name."""

    def __init__(self, samples: dict[str, list[Sample]]):
        self._samples = samples

    @classmethod
    def parse(cls, text: str, endpoint: str, keep: tuple[str, ...] | None = None) -> Metrics:
        """Parse `text`; with `keep`, only the families whose names start with one of those
        prefixes. vLLM's /metrics is ~50 kB (histograms), and parsing all of it costs tens of
        milliseconds of the event loop that also times the requests; filtering lines first
        costs well under one."""
        if keep is not None:
            text = "\n".join(
                line
                for line in text.splitlines()
                if line.startswith(keep)
                or (line.startswith(("# TYPE ", "# HELP ")) and line[7:].startswith(keep))
            )
        samples: dict[str, list[Sample]] = {}
        try:
            for family in text_string_to_metric_families(text):
                for s in family.samples:
                    samples.setdefault(s.name, []).append(Sample(dict(s.labels), float(s.value)))
        except ValueError as err:
            raise KvbenchError(f"{endpoint}: not Prometheus text ({err})") from None
        return cls(samples)

    def names(self) -> set[str]:
        return set(self._samples)

    def samples(self, *names: str) -> list[Sample]:
        """The samples of the first name present among `names`."""
        for name in names:
            found = self._samples.get(name)
            if found:
                return found
        return []

    def total(self, *names: str, exclude: dict[str, str] | None = None) -> float | None:
        """Sum over the series of the first name present (e.g. over data-parallel ranks);
        None when no name is present. Series whose labels match `exclude` are left out."""
        found = self.samples(*names)
        if exclude:
            found = [s for s in found if any(s.labels.get(k) != v for k, v in exclude.items())]
        if not found:
            return None
        return sum(s.value for s in found)

    def labels(self, *names: str) -> dict[str, str] | None:
        """The labels of the first series of the first name present (info-style gauges)."""
        found = self.samples(*names)
        return found[0].labels if found else None
