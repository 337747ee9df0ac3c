"""Who is calling. (API keys and roles: next issue.)"""

from __future__ import annotations

from app.services import Actor

ANONYMOUS = Actor("anonymous", "admin")


def current_actor() -> Actor:
    return ANONYMOUS
