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
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias

from django.db import connection, models
from django.db.models.fields.related import RelatedField
from django.utils import timezone

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
    """The backend's conversion, done once for a run of the same datetime (rows written together
    share their ``updated_at``): datetimes are immutable, so the same object converts the same."""
    last: list[Any] = [None, None]

    def adapter(value: Any) -> Any:
        if value is None:
            return None
        if value is not last[0]:
            last[:] = [value, adapt(value)]
        return last[1]

    return adapter


def _json_adapter(field: Field) -> Adapter:
    """The field's conversion; an empty object (most rows' ``metadata``) converted once."""
    empty = field.get_db_prep_save({}, connection)

    def adapter(value: Any) -> Any:
        if type(value) is dict and not value:
            return empty
        return field.get_db_prep_save(value, connection)

    return adapter


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
        elif kind == "JSONField":
            result.append(_json_adapter(field))
        else:
            result.append(_field_adapter(field))
    return result


def insert_sql(model: type[models.Model], fields: Sequence[Field]) -> str:
    qn = connection.ops.quote_name
    columns = ", ".join(qn(_column(f)) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {qn(model._meta.db_table)} ({columns}) VALUES ({placeholders})"


def update_sql(
    model: type[models.Model], fields: Sequence[Field], increments: Sequence[Field] = ()
) -> str:
    """``UPDATE … SET inc = inc + %s, …, field = %s, … WHERE pk = %s``."""
    qn = connection.ops.quote_name
    assignments = ", ".join(
        [f"{qn(_column(f))} = {qn(_column(f))} + %s" for f in increments]
        + [f"{qn(_column(f))} = %s" for f in fields]
    )
    table, key = qn(model._meta.db_table), qn(_column(_concrete(model._meta.pk)))
    return f"UPDATE {table} SET {assignments} WHERE {key} = %s"


def _params(adapters: Sequence[Adapter], rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(adapt(value) for adapt, value in zip(adapters, row, strict=True)) for row in rows]


def insert_rows(
    model: type[models.Model], fields: Sequence[Field], rows: Iterable[Sequence[Any]]
) -> None:
    """Insert value tuples (in the order of ``fields``, Python values) with one ``executemany``."""
    params = _params(adapters_for(fields), rows)
    if not params:
        return
    with connection.cursor() as cursor:
        cursor.executemany(insert_sql(model, fields), params)


def update_rows(
    model: type[models.Model],
    fields: Sequence[Field],
    rows: Iterable[Sequence[Any]],
    *,
    increments: Sequence[Field] = (),
) -> None:
    """Update rows by primary key with one ``executemany`` of :func:`update_sql`.

    Each row is a tuple of Python values: one per field of ``increments`` (added
    to the column: relative, so a concurrent writer's increment is never lost),
    then one per field of ``fields`` (set), then the primary key.
    """
    pk = _concrete(model._meta.pk)
    params = _params(adapters_for([*increments, *fields, pk]), rows)
    if not params:
        return
    with connection.cursor() as cursor:
        cursor.executemany(update_sql(model, fields, increments), params)


def fields_named(model: type[models.Model], names: Iterable[str]) -> list[Field]:
    """The concrete fields of these names (or attnames: ``sample`` or ``sample_id``)."""
    meta = model._meta
    return [_concrete(meta.get_field(name)) for name in names]


def new_row(model: type[models.Model], **values: Any) -> dict[str, Any]:
    """A new row of ``model`` as plain values by attname, for :func:`insert_dicts`.

    The fields not given have their default, as the model's constructor would
    set them (an auto-increment primary key is left out).
    """
    constant, made = _defaults(model)
    row = dict(constant)
    for name, make in made:
        row[name] = make()
    row.update(values)
    return row


@cache
def _defaults(
    model: type[models.Model],
) -> tuple[dict[str, Any], list[tuple[str, Callable[[], Any]]]]:
    """A model's defaults for :func:`new_row`: the constant ones, and the callable ones (such as
    ``dict``, called for each row: every row has its own)."""
    constant: dict[str, Any] = {}
    made: list[tuple[str, Callable[[], Any]]] = []
    for f in insertable_fields(model):
        if f.has_default() and callable(f.default):
            made.append((f.attname, f.default))
        else:
            constant[f.attname] = f.get_default()
    return constant, made


def insert_dicts(model: type[models.Model], rows: Iterable[dict[str, Any]]) -> None:
    """Like :func:`insert_objects` for rows given as plain values by attname (:func:`new_row`).

    ``auto_now`` / ``auto_now_add`` fields are set to the time of the insert, one
    for all the rows (``insert_objects`` reads the clock once per field per row).
    """
    fields = insertable_fields(model)
    now = timezone.now()
    auto = set()
    for f in _auto_now(fields):
        assert isinstance(f, models.DateTimeField), f"{f}: only DateTimeField is set here"
        auto.add(f.attname)
    names = [f.attname for f in fields]
    insert_rows(
        model,
        fields,
        ([now if name in auto else row[name] for name in names] for row in rows),
    )


def _auto_now(fields: Sequence[Field]) -> list[Field]:
    """The fields an insert sets to its own time (``auto_now`` / ``auto_now_add``)."""
    return [f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]


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
    pre_save = _auto_now(fields)
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
    fields = fields_named(model, field_names)
    attnames = [f.attname for f in fields] + [_concrete(model._meta.pk).attname]
    update_rows(model, fields, ([getattr(obj, name) for name in attnames] for obj in objs))


def update_dicts(
    model: type[models.Model], rows: Iterable[dict[str, Any]], field_names: Sequence[str]
) -> None:
    """Like :func:`update_objects` for rows given as plain values by attname (as read with
    ``values``, or made by :func:`new_row`): ``field_names`` set, by primary key."""
    fields = fields_named(model, field_names)
    attnames = [f.attname for f in fields] + [_concrete(model._meta.pk).attname]
    update_rows(model, fields, ([row[name] for name in attnames] for row in rows))


def increment_rows(
    model: type[models.Model], field_name: str, increments: Iterable[tuple[Any, int]]
) -> None:
    """``field = field + n`` for each ``(primary key, n)``, with one ``executemany``.

    Relative, not read-then-write: a concurrent writer's increment is never lost.
    """
    update_rows(
        model,
        [],
        ((n, key) for key, n in increments),
        increments=fields_named(model, [field_name]),
    )
