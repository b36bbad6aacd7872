"""The serializers' building blocks: names, namespaces, JSON objects, times, merging creates."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, models, transaction
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.relations import PKOnlyObject

from swf_testbed.messages import NAME_PATTERN
from swf_testbed.monitor.api import models as m
from swf_testbed.settings import get_settings

_NAME_RE = re.compile(NAME_PATTERN)
_M = TypeVar("_M", bound=models.Model)
_T = TypeVar("_T")


def check_name(value: str, what: str = "namespace") -> str:
    if not _NAME_RE.match(value):
        raise serializers.ValidationError(
            f"invalid {what} {value[:80]!r}: letters, digits and _ . : @ - only, at most 128 "
            f"characters"
        )
    return value


class NamespaceField(serializers.SlugRelatedField[m.Namespace]):
    """A namespace by name; an unknown but well-formed name is created."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("slug_field", "name")
        if not kwargs.get("read_only"):
            kwargs.setdefault("queryset", m.Namespace.objects.all())
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def use_pk_only_optimization(self) -> bool:
        # The foreign key holds the namespace's name (to_field="name"): a list shows it without
        # reading the namespace row of every object (one query per row before).
        return True

    def to_representation(self, value: Any) -> Any:
        return value.pk if isinstance(value, PKOnlyObject) else value.name

    def to_internal_value(self, data: Any) -> m.Namespace:
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"a namespace name (string) is required, not {type(data).__name__}"
            )
        check_name(data)
        m.Namespace.ensure({data})
        return m.Namespace.objects.get(name=data)


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.JSONField):
    """A JSON object (or null where the column allows it), for the models' ``default=dict`` JSON
    columns.

    The code that reads these columns merges and iterates them as dicts (heartbeats
    merge ``metadata``, the agent page lists ``counters``, the ingest merges
    ``metadata``/``performance_metrics``), so another JSON value is a 400 here,
    not a 500 later. DRF also checks for null before it parses a form value, so
    ``counters=null`` in a form would otherwise reach a NOT NULL column.
    """

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if value is None:
            if not self.allow_null:
                self.fail("null")
            return value
        if not isinstance(value, dict):
            raise serializers.ValidationError(f"must be a JSON object, not {type(value).__name__}")
        return value


class DateTimeField(serializers.DateTimeField):
    """A time; a naive one (as the ePIC v28 agents send) is read in ``SWF_LEGACY_TIMEZONE``, like
    their messages.
    """

    def enforce_timezone(self, value: datetime) -> datetime:
        if timezone.is_naive(value):
            value = value.replace(tzinfo=get_settings().legacy_zone)
        return super().enforce_timezone(value)


class ModelSerializer(serializers.ModelSerializer[_M]):
    # The monitor's model serializers: the models' JSON columns take JSON objects, naive times are
    # read in the legacy zone. (A comment, not a docstring: the schema would show it on every
    # component.)
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JSONObjectField,
        models.DateTimeField: DateTimeField,
    }

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # DRF builds a model serializer's fields from the model on every instance (a third of a log
        # post's time). They depend on the class alone here (Meta, declared fields, the model), so
        # they are built once per class and each instance gets a fresh copy, as DRF does for a plain
        # serializer's fields.
        cls = type(self)
        template = cls.__dict__.get("_field_template")
        if template is None:
            template = super().get_fields()
            # a per-class cache, set on first use
            cls._field_template = template  # type: ignore[attr-defined]  # not declared on the class
        return copy.deepcopy(template)


class MergingCreate:
    """A create that merges into the row a message already made (``merged`` then says so; the view
    answers 200).

    The ePIC v28 agents POST what their messages also announce (a run, an STF
    file, a run state); whichever arrives first makes the row, the other fills it in.
    """

    merged = False

    def create_or_merge(
        self, find: Callable[[], _T | None], create: Callable[[], _T], merge: Callable[[_T], _T]
    ) -> _T:
        for attempt in (1, 2):
            with transaction.atomic():
                existing = find()
                if existing is not None:
                    self.merged = True
                    return merge(existing)
                try:
                    with transaction.atomic():
                        return create()
                except IntegrityError:
                    if attempt == 2:
                        raise
                    # made concurrently (by the ingest): merge into that one
        raise AssertionError("unreachable")
