"""offshelf clients: the Python SDK (sync and asyncio) and the ``offshelf`` command line."""

from offshelf.clients.client import AsyncClient, Client, Hit, Label
from offshelf.clients.connection import Connection

__all__ = ["AsyncClient", "Client", "Connection", "Hit", "Label"]
