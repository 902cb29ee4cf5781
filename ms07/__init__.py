"""MS07 Distributor: delivery engine and on-call toolkit."""

__version__ = "0.1.0"
SERVICE_NAME = "ms07-distributor"
