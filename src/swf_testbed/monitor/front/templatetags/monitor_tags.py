"""Template filters of the monitor UI."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from django import template
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.filter
def age(value: datetime | None) -> str:
    """'4 s ago', '3 min ago', ... ('never' for None)."""
    if value is None:
        return "never"
    return f"{duration(timezone.now() - value)} ago"


@register.filter
def duration(value: timedelta | None) -> str:
    if value is None:
        return "–"
    exact = value.total_seconds()
    if exact < 0:
        return "0 s"
    if 0 < exact < 0.001:
        return "< 1 ms"
    if 0 < exact < 1:
        return f"{exact * 1000:.0f} ms"  # a 40 ms run is not "0 s"
    if exact < 10:
        return f"{exact:.1f} s"
    seconds = round(exact)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min {seconds % 60} s"
    if seconds < 172_800:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


@register.filter(expects_localtime=True)
def millis(value: datetime | None, part: str = "") -> str:
    """A timestamp to the millisecond, '2026-01-01 12:34:56.789' (``millis:"time"``:
    '12:34:56.789'); '' for None.

    What ``date:"Y-m-d H:i:s.u"|slice:":23"`` shows, without the ``date`` filter's
    character-by-character formatting: a list page shows two a row.
    """
    if value is None:
        return ""
    return value.strftime("%H:%M:%S.%f" if part == "time" else "%Y-%m-%d %H:%M:%S.%f")[:-3]


@register.simple_tag
def agent_link(name: str | None, namespace: str | None = None) -> SafeString | str:
    """A link to the page of the agent ``name`` (of ``namespace``, when given); '' for no name.

    A tag rather than an included template: list pages show one a row.
    """
    if not name:
        return ""
    href = f"{reverse('front:agent_named')}?name={quote(name, safe='/')}"
    if namespace:
        href += f"&namespace={quote(namespace, safe='/')}"
    return format_html('<a class="agent-link" href="{}">{}</a>', href, name)


@register.filter
def get(mapping: Any, key: Any) -> Any:
    try:
        return mapping.get(key)
    except AttributeError:
        return None


@register.filter
def bytes_h(value: int | None) -> str:
    if value is None:
        return "–"
    size = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return str(value)


@register.filter
def seconds_h(value: float | None) -> str:
    """Seconds rounded to what a person reads: '0.42 s', '3.1 s', '42 s', '2 min 5 s'."""
    if value is None:
        return "–"
    if value < 1:
        return f"{value:.2f} s"
    return duration(timedelta(seconds=value))
