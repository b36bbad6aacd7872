"""Small helpers of the UI views: live partial rendering, paging, flattening JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

PAGE_SIZE = 50


def reads_allowed(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Pages are open when ``SWF_API_OPEN_READS`` is on; otherwise they need a login."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not getattr(settings, "SWF_API_OPEN_READS", False) and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        return view(request, *args, **kwargs)

    return wrapper


def is_htmx(request: HttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


def render_live(request: HttpRequest, template: str, context: dict[str, Any]) -> HttpResponse:
    """The whole page, or, for the page's own poll (htmx), only its live part."""
    if is_htmx(request):
        return render(request, template.replace("front/", "front/partials/", 1), context)
    return render(request, template, context)


def paginate(request: HttpRequest, queryset: QuerySet[Any], per_page: int = PAGE_SIZE) -> Page[Any]:
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


def query_with(request: HttpRequest, **changes: Any) -> str:
    """The current query string with some parameters changed (None removes one)."""
    params = {k: v for k, v in request.GET.items()}
    for key, value in changes.items():
        if value is None or value == "":
            params.pop(key, None)
        else:
            params[key] = str(value)
    return "?" + urlencode(params) if params else "?"


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """A JSON value as (dotted.key, text) rows, for a key/value table."""
    rows: list[tuple[str, str]] = []
    if isinstance(value, dict):
        if not value and prefix:
            rows.append((prefix, "{}"))
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, list):
        if not value and prefix:
            rows.append((prefix, "[]"))
        for index, item in enumerate(value):
            rows += flatten(item, f"{prefix}[{index}]")
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        rows.append((prefix or "(value)", text))
    return rows


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)
