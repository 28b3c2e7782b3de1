"""Fit an engine's iteration-time model b = c0 + c1·(tokens in the batch) + c2·(KV tokens held)
from its own timings, with standard errors.

The data are windows: each window covers `iterations` engine iterations that together processed
`batch_tokens` tokens, held `kv_tokens` KV tokens summed over those iterations, and took `elapsed`
seconds. A per-iteration record (TensorRT-LLM's iteration stats, the simulator's time series) is a
window of one iteration; an engine that only exposes counters (vLLM's `iteration_tokens_total`
histogram, a scrape every second) gives windows of many. Summing the model over a window keeps it
linear in the coefficients:

    elapsed = c0·iterations + c1·batch_tokens + c2·kv_tokens + error

so one least-squares fit serves both. Iteration times are noisier for bigger batches and windows
differ in length, so the covariance is the heteroscedasticity-consistent sandwich (HC1), not the
textbook σ²(XᵀX)⁻¹.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kvbench import validate
from kvbench.errors import KvbenchError
from kvbench.profile import IterationTimeModel

TERMS = ("c0", "c1", "c2")


@dataclass(frozen=True)
class IterationWindows:
    """Timing data, one row per window (see the module docstring). `source` says where they came
    from, for the saved model."""

    iterations: np.ndarray
    batch_tokens: np.ndarray
    kv_tokens: np.ndarray
    elapsed: np.ndarray
    source: str = ""

    @classmethod
    def per_iteration(
        cls, batch_tokens, kv_tokens, iteration_time, source: str = ""
    ) -> IterationWindows:
        """Windows of one iteration each."""
        t = np.asarray(iteration_time, dtype=np.float64)
        return cls(
            iterations=np.ones_like(t),
            batch_tokens=np.asarray(batch_tokens, dtype=np.float64),
            kv_tokens=np.asarray(kv_tokens, dtype=np.float64),
            elapsed=t,
            source=source,
        )

    def __len__(self) -> int:
        return int(self.elapsed.shape[0])


@dataclass(frozen=True)
class IterationTimeFit:
    """A fitted iteration-time model with its uncertainty.

    `covariance` is 3×3 over (c0, c1, c2); a term that was not fitted (held at 0 because the data
    cannot separate it) has zero variance and is listed in `fixed`. `noise_sigma` is the standard
    deviation of log(observed/predicted) over single-iteration windows, the lognormal factor of
    `IterationTimeModel`; it is 0 when the data hold no single iterations."""

    c0: float
    c1: float
    c2: float
    covariance: tuple[tuple[float, ...], ...]
    noise_sigma: float
    n_windows: int
    n_iterations: int
    r_squared: float
    fixed: tuple[str, ...]
    source: str

    @property
    def stderr(self) -> tuple[float, ...]:
        return tuple(math.sqrt(max(self.covariance[i][i], 0.0)) for i in range(3))

    def model(self) -> IterationTimeModel:
        return IterationTimeModel(c0=self.c0, c1=self.c1, c2=self.c2, noise_sigma=self.noise_sigma)

    def mean_time_stderr(self, batch_tokens: float, kv_tokens: float) -> float:
        """Standard error of the predicted mean iteration time at one operating point."""
        x = np.array([1.0, batch_tokens, kv_tokens])
        return float(math.sqrt(max(x @ np.array(self.covariance) @ x, 0.0)))

    def to_json(self) -> dict:
        out = asdict(self)
        out["covariance"] = [list(row) for row in self.covariance]
        out["fixed"] = list(self.fixed)
        out["stderr"] = list(self.stderr)
        return out

    @classmethod
    def from_json(cls, data: dict, where: str = "") -> IterationTimeFit:
        try:
            cov = tuple(tuple(float(v) for v in row) for row in data["covariance"])
            if len(cov) != 3 or any(len(row) != 3 for row in cov):
                raise ValueError("covariance must be 3×3")
            return cls(
                c0=float(data["c0"]),
                c1=float(data["c1"]),
                c2=float(data["c2"]),
                covariance=cov,
                noise_sigma=float(data.get("noise_sigma", 0.0)),
                n_windows=int(data.get("n_windows", 0)),
                n_iterations=int(data.get("n_iterations", 0)),
                r_squared=float(data.get("r_squared", float("nan"))),
                fixed=tuple(data.get("fixed", ())),
                source=str(data.get("source", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise KvbenchError(f"{where}: not an iteration-time model ({err})") from None


def fit_iteration_time(
    windows: IterationWindows, terms: tuple[str, ...] = TERMS
) -> IterationTimeFit:
    """Least-squares fit of the iteration-time model to `windows`.

    `terms` chooses which coefficients to fit (c0 always). A term whose column carries no
    information beyond the others (constant per iteration, e.g. a fixed batch) is held at zero
    and reported in `fixed`, rather than fitted to noise."""
    n = len(windows)
    if "c0" not in terms:
        raise KvbenchError("the iteration-time fit needs the constant term c0")
    iters = windows.iterations
    columns = {"c0": iters, "c1": windows.batch_tokens, "c2": windows.kv_tokens}
    arrays = [iters, windows.batch_tokens, windows.kv_tokens, windows.elapsed]
    if any(a.shape != (n,) for a in arrays):
        raise KvbenchError("iteration windows: columns differ in length")
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise KvbenchError("iteration windows: non-finite values")
    if np.any(iters <= 0) or np.any(windows.elapsed <= 0):
        raise KvbenchError(
            "iteration windows: every window needs ≥ 1 iteration and a positive time"
        )

    # Keep a term only if its per-iteration value varies: otherwise it is collinear with c0.
    fitted: list[str] = ["c0"]
    for term in ("c1", "c2"):
        if term not in terms:
            continue
        per_iter = columns[term] / iters
        if np.ptp(per_iter) > 1e-9 * max(1.0, float(np.max(np.abs(per_iter)))):
            fitted.append(term)
    y = windows.elapsed
    while True:
        coef, cov, resid, x = least_squares_hc1([columns[t] for t in fitted], y, n)
        # An iteration cannot get cheaper with more tokens: a negative slope means the data do
        # not support that term, so it is held at zero and the rest refitted.
        negative = [(coef[i], t) for i, t in enumerate(fitted) if t != "c0" and coef[i] < 0]
        if not negative:
            break
        fitted.remove(min(negative)[1])
    p = len(fitted)

    full_coef = dict.fromkeys(TERMS, 0.0)
    full_cov = np.zeros((3, 3))
    idx = [TERMS.index(t) for t in fitted]
    for i, ti in enumerate(idx):
        full_coef[TERMS[ti]] = float(coef[i])
        for j, tj in enumerate(idx):
            full_cov[ti, tj] = cov[i, j]

    # R² of the mean iteration time per window (for single iterations, of each iteration's time).
    per_iter = y / iters
    ss_tot = float(np.sum((per_iter - per_iter.mean()) ** 2))
    r2 = 1.0 - float(np.sum((resid / iters) ** 2)) / ss_tot if ss_tot > 0 else 1.0
    single = iters == 1
    predicted = x @ coef
    sigma = 0.0
    ok = single & (predicted > 0)
    if np.count_nonzero(ok) > p:
        sigma = float(np.std(np.log(y[ok] / predicted[ok]), ddof=p))
    return IterationTimeFit(
        c0=full_coef["c0"],
        c1=full_coef["c1"],
        c2=full_coef["c2"],
        covariance=tuple(tuple(float(v) for v in row) for row in full_cov),
        noise_sigma=sigma,
        n_windows=n,
        n_iterations=int(round(float(np.sum(iters)))),
        r_squared=r2,
        fixed=tuple(t for t in TERMS if t not in fitted),
        source=windows.source,
    )


def least_squares_hc1(columns: list[np.ndarray], y: np.ndarray, n: int):
    """OLS of y on `columns` with the HC1 sandwich covariance: (coef, cov, residuals, X)."""
    p = len(columns)
    if n < p + 2:
        raise KvbenchError(
            f"iteration windows: {n} windows are too few to fit {p} coefficients with errors"
        )
    x = np.column_stack(columns)
    # Scale columns so the normal equations are well conditioned (kv_tokens ~ 1e5, c0 column ~ 1).
    scale = np.sqrt(np.sum(x * x, axis=0))
    xs = x / scale
    coef_s, _, rank, _ = np.linalg.lstsq(xs, y, rcond=None)
    if rank < p:
        raise KvbenchError("iteration windows: the terms cannot be separated (collinear data)")
    resid = y - xs @ coef_s
    xtx_inv = np.linalg.inv(xs.T @ xs)
    meat = (xs * resid[:, None] ** 2).T @ xs
    cov_s = xtx_inv @ meat @ xtx_inv * (n / (n - p))
    return coef_s / scale, cov_s / np.outer(scale, scale), resid, x


def trtllm_iteration(record: dict) -> tuple[float, float, float] | None:
    """(batch tokens, KV held, seconds) of one TensorRT-LLM `/metrics` iteration record
    (../shared/docs/engines.md §3.4): `iterLatencyMS`; tokens in the batch = context tokens + one
    per generation request; KV held = used blocks × tokens per block. None for an idle iteration,
    which carries no information about batch cost. KeyError, TypeError, ValueError or
    AttributeError for a record of another shape."""
    latency_ms = float(record["iterLatencyMS"])
    ifb = record.get("inflightBatchingStats") or {}
    tokens = float(ifb.get("numCtxTokens", 0)) + float(ifb.get("numGenRequests", 0))
    kvs = record.get("kvCacheStats") or {}
    held = float(kvs.get("usedNumBlocks", 0)) * float(kvs.get("tokensPerBlock", 0))
    if latency_ms <= 0 or tokens <= 0:
        return None
    return tokens, held, latency_ms / 1000.0


def windows_from_trtllm_stats(records: list[dict], where: str) -> IterationWindows:
    """Per-iteration windows from TensorRT-LLM's `/metrics` iteration records (`trtllm_iteration`)."""
    batch, kv, t = [], [], []
    for i, rec in enumerate(records):
        try:
            row = trtllm_iteration(rec)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise KvbenchError(
                f"{where}: record {i + 1}: not a TensorRT-LLM iteration record ({err})"
            ) from None
        if row is None:
            continue
        batch.append(row[0])
        kv.append(row[1])
        t.append(row[2])
    if not t:
        raise KvbenchError(f"{where}: no non-idle iteration records")
    return IterationWindows.per_iteration(
        batch, kv, t, source=f"TensorRT-LLM iteration stats ({where})"
    )


def load_windows(path: str | Path) -> IterationWindows:
    """Read timing windows from a file: TensorRT-LLM iteration records (a JSON list, or JSON
    lines, as `/metrics` returns them), or CSV with columns `elapsed` (or `iteration_time`),
    `batch_tokens`, `kv_tokens` and optionally `iterations` (default 1)."""
    path = Path(path)
    try:
        text = validate.input_text(path)
    except FileNotFoundError:
        raise KvbenchError(f"{path}: no such file") from None
    stripped = text.lstrip()
    if stripped.startswith("[") or stripped.startswith("{"):
        try:
            whole = json.loads(text)
            records = whole if isinstance(whole, list) else [whole]
        except json.JSONDecodeError:
            # JSON lines: one record, or one scrape of `/metrics` (itself a list), per line.
            records = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise KvbenchError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
                records.extend(rec if isinstance(rec, list) else [rec])
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise KvbenchError(f"{path}: expected a list of iteration records")
        return windows_from_trtllm_stats(records, str(path))
    return _windows_from_csv(path, text)


def _windows_from_csv(path: Path, text: str) -> IterationWindows:
    lines = [ln for ln in text.splitlines()]
    if not lines or not lines[0].strip():
        raise KvbenchError(f"{path}:1: empty file")
    header = [h.strip() for h in lines[0].split(",")]
    time_col = "elapsed" if "elapsed" in header else "iteration_time"
    for need in (time_col, "batch_tokens", "kv_tokens"):
        if need not in header:
            raise KvbenchError(f"{path}:1: missing column {need!r}")
    cols: dict[str, list[float]] = {
        name: [] for name in ("iterations", time_col, "batch_tokens", "kv_tokens")
    }
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(header):
            raise KvbenchError(f"{path}:{lineno}: expected {len(header)} fields, got {len(cells)}")
        row = dict(zip(header, cells, strict=True))
        for name in cols:
            raw = row.get(name, "1" if name == "iterations" else "")
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise KvbenchError(f"{path}:{lineno}: {name} is not a number: {raw!r}") from None
            if not math.isfinite(value) or value < 0:
                raise KvbenchError(f"{path}:{lineno}: {name} must be a finite non-negative number")
            cols[name].append(value)
    if not cols[time_col]:
        raise KvbenchError(f"{path}:2: no data rows")
    return IterationWindows(
        iterations=np.array(cols["iterations"]),
        batch_tokens=np.array(cols["batch_tokens"]),
        kv_tokens=np.array(cols["kv_tokens"]),
        elapsed=np.array(cols[time_col]),
        source=str(path),
    )


@dataclass(frozen=True)
class Calibration:
    """What `kvbench calibrate --output` saves: the fitted iteration-time model and, when the
    calibration run overloaded the engine, the batch tokens it recomputed per request."""

    fit: IterationTimeFit
    preemption_waste: float | None = None
    backend: str = ""
    simulated: bool = False

    def to_json(self) -> dict:
        return {
            "fit": self.fit.to_json(),
            "preemption_waste": self.preemption_waste,
            "backend": self.backend,
            "simulated": self.simulated,
        }


def load_calibration(path: str | Path) -> Calibration:
    """A calibration saved by `kvbench calibrate --output` (a bare fit object is accepted)."""
    path = Path(path)
    data = validate.input_json_object(path)
    waste = data.get("preemption_waste")
    if waste is not None and not (isinstance(waste, (int, float)) and waste >= 0):
        raise KvbenchError(f"{path}: preemption_waste must be a non-negative number")
    return Calibration(
        fit=IterationTimeFit.from_json(data.get("fit", data), str(path)),
        preemption_waste=None if waste is None else float(waste),
        backend=str(data.get("backend", "")),
        simulated=bool(data.get("simulated", False)),
    )


def load_fit(path: str | Path) -> IterationTimeFit:
    """A fitted model saved by `kvbench calibrate --output`."""
    return load_calibration(path).fit
