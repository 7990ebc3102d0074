"""Helpers for API views: the workspace and role of the caller."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask_login import current_user

from ...access import current_workspace, require
from ...extension import get_state

F = TypeVar("F", bound=Callable[..., Any])


def workspace_id() -> int:
    state = get_state()
    return current_workspace(state.session, state.workspace_key).id


def allow(permission: str) -> None:
    require(permission, get_state().role_loader)


def permission(name: str) -> Callable[[F], F]:
    """Check the caller's role before anything else, the request body included.

    Put it above ``@blp.arguments``: a role that may not act gets 403 whatever it sends, rather
    than a 422 that would tell it how to shape a request it can never make.  ``functools.wraps``
    carries flask-smorest's documentation attributes over.
    """

    def decorator(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            allow(name)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def user_id() -> str:
    return str(current_user.get_id())


def session():
    return get_state().session
