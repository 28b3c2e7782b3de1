//! kvbench's Rust core, built into the Python module `kvbench._core`.
//!
//! Rust owns the hot loops (arrival generation, the HTTP driver's timed send/receive loop, the
//! engine simulator, queue statistics) and returns numpy arrays or plain records; Python owns
//! orchestration, I/O and the CLI.
//! `kvbench/_core.pyi` documents every function registered here.

use pyo3::prelude::*;

mod arrivals;
mod driver;
mod served;
mod sim;
mod stats;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    arrivals::register(m)?;
    driver::register(m)?;
    served::register(m)?;
    sim::register(m)?;
    stats::register(m)?;
    Ok(())
}
