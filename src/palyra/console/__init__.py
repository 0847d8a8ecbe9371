"""The web console: served at /console, a client of the admin API at /api/v1 (see docs/CONSOLE.md)."""

from palyra.console.routes import build_console
from palyra.console.session import ConsoleSession, ConsoleSessions

__all__ = ["ConsoleSession", "ConsoleSessions", "build_console"]
