"""kvbench: empirical stability boundaries of LLM inference engines, set beside queueing theory."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kvbench")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0+unknown"
