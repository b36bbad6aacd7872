"""Logins for people: created or updated with a checked password (the API's tokens are in
``token``).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import models


class LoginError(ValueError):
    """A user name or password that cannot be used; the message says why."""


def set_login(username: str, password: str, *, staff: bool = False) -> tuple[Any, bool]:
    """Create the login ``username`` (or set its password); returns the user and whether it is new.

    The password must pass the project's validators (length, common passwords, similarity).
    ``staff``: it may also use the Django admin. An existing user's staff flag is only ever added.
    """
    user_model = get_user_model()
    field = user_model._meta.get_field(user_model.USERNAME_FIELD)
    assert isinstance(field, models.Field)  # the user name is a column, not a relation
    try:
        field.run_validators(username)
        field.clean(username, None)
    except ValidationError as exc:
        raise LoginError(f"user name {username!r}: {' '.join(exc.messages)}") from None
    if not password:
        raise LoginError("the password is empty")
    existing = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
    user = existing or user_model(**{user_model.USERNAME_FIELD: username})
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise LoginError(f"password refused: {' '.join(exc.messages)}") from None
    user.set_password(password)
    user.is_active = True
    user.is_staff = user.is_staff or staff
    user.save()
    return user, existing is None
