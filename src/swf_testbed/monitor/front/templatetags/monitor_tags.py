"""Template filters of the monitor UI."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django import template
from django.utils import timezone

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
