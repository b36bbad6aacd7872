"""Inserting and updating many rows with one prepared statement (``executemany``).

On SQLite and PostgreSQL alike.

Django's ``bulk_create`` prepares every value of every row through several
layers of the SQL compiler and, on SQLite, splits the rows into statements of
at most 999 parameters; for the ingest's hot path that costs more than the
database itself. Here each column gets its database adapter once (chosen from
the field type), and the rows go through the DB-API cursor's ``executemany``.

Limits (the callers respect them): no signals (``bulk_create`` sends none
either), and auto-increment primary keys are not read back (models with a
UUID or natural key keep theirs, which are set before the insert).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from django.db import connection, models
from django.db.models.fields.related import RelatedField

Adapter = Callable[[Any], Any]
if TYPE_CHECKING:  # Django's Field is generic in its stubs only, not at run time
    Field: TypeAlias = models.Field[Any, Any]

_TEXT = {"CharField", "TextField", "SlugField", "EmailField", "URLField"}
_INTEGER = {
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveBigIntegerField",
    "PositiveSmallIntegerField",
    "AutoField",
    "BigAutoField",
    "SmallAutoField",
}


def _text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else str(value)


def _integer(value: Any) -> Any:
    return value if value is None or type(value) is int else int(value)


def _float(value: Any) -> Any:
    return value if value is None or type(value) is float else float(value)


def _datetime_adapter(adapt: Callable[[Any], Any]) -> Adapter:
    return lambda value: None if value is None else adapt(value)


def _field_adapter(field: Field) -> Adapter:
    return lambda value: field.get_db_prep_save(value, connection)


def _column(field: Field) -> str:
    """A concrete field's column (Django types it optional: only non-concrete fields lack one)."""
    assert field.column is not None, f"{field} has no column"
    return field.column


def _concrete(field: Any) -> Field:
    """A model field by name, known to be a concrete field rather than a reverse relation."""
    assert isinstance(field, models.Field), f"{field} is not a concrete field"
    return field


def adapters_for(fields: Sequence[Field]) -> list[Adapter]:
    """One function per field: a Python value (in attname form) to a DB-API parameter."""
    ops = connection.ops
    result: list[Adapter] = []
    for field in fields:
        kind = field.get_internal_type()
        if isinstance(field, RelatedField):  # a forward relation (field.is_relation)
            target = field.target_field
            result.append(adapters_for([target])[0])
        elif kind in _TEXT:
            result.append(_text)
        elif kind in _INTEGER:
            result.append(_integer)
        elif kind == "FloatField":
            result.append(_float)
        elif kind == "DateTimeField":
            result.append(_datetime_adapter(ops.adapt_datetimefield_value))
        else:
            result.append(_field_adapter(field))
    return result


def insert_sql(model: type[models.Model], fields: Sequence[Field]) -> str:
    qn = connection.ops.quote_name
    columns = ", ".join(qn(_column(f)) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {qn(model._meta.db_table)} ({columns}) VALUES ({placeholders})"


def update_sql(model: type[models.Model], fields: Sequence[Field]) -> str:
    qn = connection.ops.quote_name
    assignments = ", ".join(f"{qn(_column(f))} = %s" for f in fields)
    table, key = qn(model._meta.db_table), qn(_column(_concrete(model._meta.pk)))
    return f"UPDATE {table} SET {assignments} WHERE {key} = %s"


def insert_rows(
    model: type[models.Model], fields: Sequence[Field], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert value tuples (in the order of ``fields``, Python values) with one ``executemany``."""
    adapters = adapters_for(fields)
    params = [
        tuple(adapt(value) for adapt, value in zip(adapters, row, strict=True)) for row in rows
    ]
    if not params:
        return
    with connection.cursor() as cursor:
        cursor.executemany(insert_sql(model, fields), params)


def insertable_fields(model: type[models.Model]) -> list[Field]:
    """The concrete fields an INSERT names: all but an auto-increment primary key."""
    return [
        f
        for f in model._meta.concrete_fields
        if not (f.primary_key and isinstance(f, models.AutoField))
    ]


def insert_objects(objs: Sequence[models.Model]) -> None:
    """Like ``bulk_create(objs)`` for unsaved instances of one model, without reading auto keys
    back.

    ``auto_now`` / ``auto_now_add`` are applied (``pre_save``) as ``bulk_create`` does.
    """
    if not objs:
        return
    model = type(objs[0])
    fields = insertable_fields(model)
    pre_save = [
        f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)
    ]
    attnames = [f.attname for f in fields]
    rows = []
    for obj in objs:
        for f in pre_save:
            f.pre_save(obj, add=True)
        obj._state.adding = False
        obj._state.db = connection.alias
        rows.append([getattr(obj, name) for name in attnames])
    insert_rows(model, fields, rows)


def update_objects(objs: Sequence[models.Model], field_names: Sequence[str]) -> None:
    """Like ``bulk_update(objs, field_names)``: one ``UPDATE … WHERE pk = %s`` run with
    ``executemany``.

    ``bulk_update`` builds one ``CASE WHEN pk = … THEN …`` expression per field
    over all the objects, through the ORM's expression machinery: for a batch
    of a few hundred slices that compiling costs far more than the database's
    work. As with ``bulk_update``, the values are the objects' attributes as
    they are (``auto_now`` fields are the caller's to set) and no signals are sent.
    """
    if not objs:
        return
    model = type(objs[0])
    meta = model._meta
    fields = [_concrete(meta.get_field(name)) for name in field_names]
    pk = _concrete(meta.pk)
    adapters = adapters_for([*fields, pk])
    attnames = [f.attname for f in fields] + [pk.attname]
    params = [
        tuple(adapt(getattr(obj, name)) for adapt, name in zip(adapters, attnames, strict=True))
        for obj in objs
    ]
    with connection.cursor() as cursor:
        cursor.executemany(update_sql(model, fields), params)


def increment_rows(
    model: type[models.Model], field_name: str, increments: Iterable[tuple[Any, int]]
) -> None:
    """``field = field + n`` for each ``(primary key, n)``, with one ``executemany``.

    Relative, not read-then-write: a concurrent writer's increment is never lost.
    """
    field = _concrete(model._meta.get_field(field_name))
    pk = _concrete(model._meta.pk)
    adapt_pk = adapters_for([pk])[0]
    params = [(int(n), adapt_pk(key)) for key, n in increments]
    if not params:
        return
    with connection.cursor() as cursor:
        cursor.executemany(increment_sql(model, field), params)


def increment_sql(model: type[models.Model], field: Field) -> str:
    qn = connection.ops.quote_name
    column = qn(_column(field))
    table, key = qn(model._meta.db_table), qn(_column(_concrete(model._meta.pk)))
    return f"UPDATE {table} SET {column} = {column} + %s WHERE {key} = %s"
