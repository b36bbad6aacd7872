"""Handler registration: ``@handles(StfReady)`` and the check of an agent class's handlers.

:func:`handles` marks a method as the handler of message classes of
:mod:`swf_testbed.messages`; :func:`routes_of`, called when an agent class is
created (``Agent.__init_subclass__``), builds the class's table ``msg_type`` →
method and checks it, so that a registration that cannot work fails the import of
the agent's module with a :class:`HandlerError` naming the module, class and
method, instead of dead-lettering messages at run time.
"""

from __future__ import annotations

import inspect
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, overload

from swf_testbed.messages import MESSAGE_TYPES, V28_MESSAGE_TYPES, Message

_A = TypeVar("_A")  # the agent class
_M1 = TypeVar("_M1", bound=Message)
_M2 = TypeVar("_M2", bound=Message)
_M3 = TypeVar("_M3", bound=Message)
_F = TypeVar("_F", bound=Callable[..., None])

_DECLARED = "_swf_handles"
"""The attribute :func:`handles` puts on a handler: what it was declared for, as written."""


class HandlerError(TypeError):
    """A handler registration that cannot work, found when the agent class is created.

    The message names the module, class and method, and says what is wrong: not a message
    class, two handlers for one message type, a parameter annotation that disagrees with
    the decorator, a method that cannot take ``(self, msg)``.
    """


@overload
def handles(
    t1: type[_M1], /
) -> Callable[[Callable[[_A, _M1], None]], Callable[[_A, _M1], None]]: ...
@overload
def handles(
    t1: type[_M1], t2: type[_M2], /
) -> Callable[[Callable[[_A, _M1 | _M2], None]], Callable[[_A, _M1 | _M2], None]]: ...
@overload
def handles(
    t1: type[_M1], t2: type[_M2], t3: type[_M3], /
) -> Callable[[Callable[[_A, _M1 | _M2 | _M3], None]], Callable[[_A, _M1 | _M2 | _M3], None]]: ...
@overload
def handles(*message_types: str) -> Callable[[_F], _F]: ...
def handles(*message_types: type[Message] | str) -> Callable[[_F], _F]:
    """Register a method as the handler of one or more message classes.

    ``@handles(StfReady)`` on ``def on_stf_ready(self, msg: StfReady) -> None``: the
    method gets every ``stf_ready`` message of the agent's namespace, validated and
    parsed into ``StfReady`` (one received in the ePIC v28 dialect is an ``StfReadyV28``,
    a subclass). The registration is checked when the agent class is created, so that
    a mistake is an import error (:class:`HandlerError`), not a message dead-lettered
    at run time.

    The ``msg_type`` strings of earlier versions (``@handles("stf_ready")``) still work,
    resolved and checked the same way, but are deprecated (a ``DeprecationWarning``);
    give the class.
    """
    if not message_types:
        raise TypeError("handles() needs at least one message class, e.g. @handles(StfReady)")
    strings = [t for t in message_types if isinstance(t, str)]
    if strings:
        names = ", ".join(getattr(_schema_class(t), "__name__", "<its class>") for t in strings)
        warnings.warn(
            f"@handles({', '.join(map(repr, strings))}): msg_type strings are deprecated, "
            f"give the message class: @handles({names}) from swf_testbed.messages",
            DeprecationWarning,
            stacklevel=2,
        )

    def decorate(fn: _F) -> _F:
        setattr(fn, _DECLARED, message_types)
        return fn

    return decorate


@dataclass(frozen=True, slots=True)
class Route:
    """Where messages of one ``msg_type`` go: the method, and the class it is given."""

    message: type[Message]
    method: str


def _shown(declared: object) -> str:
    return declared.__qualname__ if isinstance(declared, type) else repr(declared)


def _msg_type(cls: type[Message]) -> str | None:
    default = cls.model_fields["msg_type"].default
    return default if isinstance(default, str) else None


def _schema_class(msg_type: str) -> type[Message] | None:
    """The class a received ``msg_type`` is parsed into (v28-only types have only their v28 one)."""
    return MESSAGE_TYPES.get(msg_type) or V28_MESSAGE_TYPES.get(msg_type)


def _message_class(declared: object, where: str) -> tuple[str, type[Message]]:
    """The msg_type and class an argument of ``@handles`` stands for, or a :class:`HandlerError`."""
    if isinstance(declared, str):
        cls = _schema_class(declared)
        if cls is None:
            known = ", ".join(sorted({*MESSAGE_TYPES, *V28_MESSAGE_TYPES}))
            raise HandlerError(f"{where}: @handles({declared!r}): unknown msg_type; known: {known}")
        return declared, cls
    if not (isinstance(declared, type) and issubclass(declared, Message)):
        raise HandlerError(
            f"{where}: @handles({_shown(declared)}) is not a message class: give one of "
            f"swf_testbed.messages, e.g. @handles(StfReady)"
        )
    msg_type = _msg_type(declared)
    schema = _schema_class(msg_type) if msg_type is not None else None
    if msg_type is None or schema is None:
        raise HandlerError(
            f"{where}: @handles({declared.__name__}): not a message type of the schema "
            f"(it has no msg_type of its own): give the concrete classes, e.g. @handles(StfReady)"
        )
    if schema is not declared:
        raise HandlerError(
            f"{where}: @handles({declared.__name__}): {msg_type!r} messages arrive as "
            f"{schema.__name__} (those in the ePIC v28 dialect as a subclass of it): "
            f"@handles({schema.__name__})"
        )
    return msg_type, schema


def _accepts(annotation: object, message: type[Message]) -> bool:
    """Whether a parameter annotated ``annotation`` can be given a ``message``."""
    if annotation is Any or annotation is object:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts(get_args(annotation)[0], message)
    if origin is Union or origin is types.UnionType:
        return any(_accepts(member, message) for member in get_args(annotation))
    return isinstance(annotation, type) and issubclass(message, annotation)


def _check_handler(fn: object, routes: list[Route], where: str) -> None:
    """``fn`` takes ``(self, msg)`` and its ``msg`` annotation accepts every routed class."""
    if not inspect.isfunction(fn):
        raise HandlerError(f"{where}: registered as a handler but is not a method ({fn!r})")
    try:
        signature = inspect.signature(fn, eval_str=True)
    except Exception as exc:  # noqa: BLE001 - any failure to evaluate an annotation: say which
        raise HandlerError(
            f"{where}: cannot resolve the annotations of the handler ({exc}); the message "
            f"class must be importable when the agent class is created (not only under "
            f"TYPE_CHECKING)"
        ) from None
    try:
        signature.bind(None, None)
    except TypeError:
        raise HandlerError(
            f"{where}: a handler takes (self, msg); this one is {fn.__name__}{signature}"
        ) from None
    positional = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) < 2 or positional[1].annotation is inspect.Parameter.empty:
        return  # *args, or not annotated: nothing to compare
    param = positional[1]
    for route in routes:
        if not _accepts(param.annotation, route.message):
            shown = getattr(param.annotation, "__name__", None) or repr(param.annotation)
            raise HandlerError(
                f"{where}: @handles({route.message.__name__}) but its parameter is "
                f"{param.name}: {shown}, which a {route.message.__name__} is not"
            )


def routes_of(cls: type) -> dict[str, Route]:
    """The handler table of an agent class: msg_type → route, checked (:class:`HandlerError`).

    Walks the class's bases first: a subclass's handler for a message type replaces its
    base's; a method redefined without ``@handles`` keeps the base's registration; one
    redefined with ``@handles`` is registered for what it declares, and only that.
    """
    routes: dict[str, Route] = {}
    for klass in reversed(cls.__mro__):
        declared_here: dict[str, str] = {}
        for attr, value in vars(klass).items():
            declared = getattr(value, _DECLARED, None)
            if declared is None:
                continue
            routes = {t: r for t, r in routes.items() if r.method != attr}
            where = f"{klass.__module__}.{klass.__qualname__}.{attr}"
            for item in declared:
                msg_type, message = _message_class(item, where)
                if msg_type in declared_here:
                    raise HandlerError(
                        f"{where}: two handlers for {message.__name__} in "
                        f"{klass.__qualname__}: {declared_here[msg_type]} and {attr}"
                    )
                declared_here[msg_type] = attr
                routes[msg_type] = Route(message, attr)
    by_method: dict[str, list[Route]] = {}
    for route in routes.values():
        by_method.setdefault(route.method, []).append(route)
    for attr, method_routes in by_method.items():
        fn = inspect.getattr_static(cls, attr)
        owner = next(k for k in cls.__mro__ if attr in vars(k))
        _check_handler(fn, method_routes, f"{owner.__module__}.{owner.__qualname__}.{attr}")
    return routes
