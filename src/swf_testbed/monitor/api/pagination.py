"""Paging: a plain list for old clients, ``limit``/``offset`` for everyone else."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request


class OptionalLimitOffsetPagination(LimitOffsetPagination):
    """Pages only when ``limit`` or ``offset`` is given.

    Without them the response is a plain JSON list, as the existing ePIC
    monitor returns and its agents expect (capped, see
    :class:`~swf_testbed.monitor.api.views.MonitorViewSetMixin`).
    """

    default_limit = 100
    max_limit = 1000

    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None
    ) -> list[Any] | None:
        params = request.query_params
        if self.limit_query_param not in params and self.offset_query_param not in params:
            return None
        return super().paginate_queryset(queryset, request, view)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Either shape: the plain list (no paging parameters) or the page object (with them)."""
        return {
            "oneOf": [
                {**schema, "description": "without limit/offset: a plain list"},
                super().get_paginated_response_schema(schema),
            ]
        }


class MessagePagination(OptionalLimitOffsetPagination):
    """Message pages count from the facet table when the filters allow it (millions of rows)."""

    def get_count(self, queryset: QuerySet[Any, Any] | Sequence[Any]) -> int:
        from swf_testbed.monitor.api.facets import count_from_rollup

        view = getattr(self, "view", None)
        filters = getattr(view, "rollup_filters", None)
        if filters is not None:
            return count_from_rollup(filters)
        return super().get_count(queryset)

    def paginate_queryset(
        self, queryset: Any, request: Request, view: Any = None
    ) -> list[Any] | None:
        self.view = view
        return super().paginate_queryset(queryset, request, view)
