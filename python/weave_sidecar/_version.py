"""The package version: the single source for the wheel and the Go binary."""

__version__ = "0.1.0"
