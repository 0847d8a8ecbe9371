"""The one error shared state raises: the store behind it cannot be reached.

It is a ``PalyraError`` (503 ``service_unavailable``), so the HTTP edge already renders it; the
``code`` says which store failed, e.g. ``budget_store_unavailable``.
"""

from __future__ import annotations

from palyra.errors import PalyraError


class SharedStateUnavailable(PalyraError):
    status = 503
    type = "service_unavailable"
    code = "shared_state_unavailable"

    # False when Redis answered but refused the command itself (a script error): retrying the same
    # command is unlikely to help, unlike after a lost connection, a timeout or a failover.
    transient: bool = True
