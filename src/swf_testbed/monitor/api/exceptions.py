"""API error handling: bad input is a 400 with a clear message, never a 500."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError, IntegrityError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler

from swf_testbed.monitor.api.models import ImmutableError

log = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state of the resource."
    default_code = "conflict"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus the database's own refusals turned into client errors."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=as_serializer_error(exc))
    elif isinstance(exc, ImmutableError):
        exc = exceptions.ValidationError({"detail": str(exc)})
    elif isinstance(exc, DataError):
        # e.g. a NUL character PostgreSQL refuses, a number out of the column's range
        log.info("database refused a value: %s", exc)
        exc = exceptions.ValidationError(
            {"detail": f"a value was refused by the database: {exc}".strip()}
        )
    elif isinstance(exc, IntegrityError):
        log.info("integrity error: %s", exc)
        exc = Conflict(f"conflicts with an existing record: {exc}".strip())
    return drf_exception_handler(exc, context)
