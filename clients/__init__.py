"""offshelf clients: the Python SDK and the ``offshelf`` command line."""

from offshelf.clients.client import Client

__all__ = ["Client"]
