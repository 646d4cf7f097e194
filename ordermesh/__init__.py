"""The ordermesh application: configuration, the service runner and the CLI."""

__version__ = "0.1.0"
