"""Domain errors of the service. The API maps each to one HTTP status, in one place."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500

    def __init__(self, message: str, errors: dict[str, Any] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.errors = errors or {}
        self.extra = extra


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class Invalid(ServiceError):
    status = 422


class DatabaseRefused(Invalid):
    """A value of the request that the database refused to store (the domain, app/risk/domain.py, is meant to
    keep such values out): a 422, and nothing was written."""


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class Unavailable(ServiceError):
    status = 503


class TooManyRequests(ServiceError):
    """A client refused unread for a while: too many failed authentications (app/keys.py)."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after
