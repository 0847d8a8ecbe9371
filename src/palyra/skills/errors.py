"""Skill errors. Each is a ``PalyraError`` so the admin API's one error handler renders it."""

from __future__ import annotations

from palyra.errors import InvalidRequest, NotFound, PalyraError


class SkillRejected(InvalidRequest):
    """A package failed verification at install; ``reasons`` lists every finding (``code: detail``)."""

    code = "skill_rejected"

    def __init__(self, message: str, *, code: str | None = None, reasons: list[str] | None = None) -> None:
        super().__init__(message, code=code)
        self.reasons = reasons or [message]


class SkillConflict(PalyraError):
    status = 409
    type = "invalid_request_error"
    code = "skill_already_installed"


class SkillNotFound(NotFound):
    code = "skill_not_found"


class SkillQuarantined(PalyraError):
    """The skill failed an audit; its artifact is refused until an operator re-installs or releases it."""

    status = 423
    type = "invalid_request_error"
    code = "skill_quarantined"
