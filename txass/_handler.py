"""
Handlers: the objects whose methods serve requests or receive results.

L{make_dispatcher} accepts four kinds of handler:

  - a class: every message gets a fresh instance, whose method is called;
  - a module: its public functions (those in C{__all__} when the module
    defines it, otherwise the functions defined in the module itself);
  - a mapping from method names to callables;
  - any other object: its public methods, on that one shared instance.

A method name is reachable only if it does not start with C{_}, names an
attribute the handler has itself (nothing inherited from C{object}), and that
attribute is callable.  C{on_error} is never reachable: it names the
handler's hook for failed requests, which a server calls as
C{on_error(exception, request)}.  These checks look at the class or module without
running handler code, so a rejected name runs none: no constructor, no
property, no C{__getattr__}.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

from twisted.internet import defer

from txass.errors import InvalidHandler, MethodNotFound

_MISSING = object()

# The name of a handler's error hook, which requests cannot call.
ERROR_HOOK = "on_error"


def _check_public(name: object, *, identifier: bool = True) -> str:
    if not isinstance(name, str) or not name:
        raise MethodNotFound(f"method name must be a non-empty string, not {name!r}")
    if name.startswith("_"):
        raise MethodNotFound(f"method {name!r} is private: names starting with '_' cannot be called")
    if identifier and not name.isidentifier():
        raise MethodNotFound(f"method {name!r} is not a Python identifier")
    if name == ERROR_HOOK:
        raise MethodNotFound(f"method {name!r} is the handler's error hook and cannot be called")
    return name


def _static_attribute(owner: Any, name: str, described: str) -> Any:
    attribute = inspect.getattr_static(owner, name, _MISSING)
    if attribute is _MISSING:
        raise MethodNotFound(f"{described} has no method {name!r}")
    if inspect.getattr_static(object, name, _MISSING) is attribute:
        raise MethodNotFound(f"method {name!r} is inherited from object and cannot be called")
    if not callable(attribute) and not isinstance(attribute, (staticmethod, classmethod)):
        raise MethodNotFound(f"{described} attribute {name!r} is not callable")
    return attribute


class Dispatcher:
    """
    Finds the callable for a method name; built by L{make_dispatcher}.
    """

    def __init__(self, handler: Any, description: str) -> None:
        self.handler = handler
        self.description = description

    def resolve(self, name: str) -> Callable[..., Any]:
        """
        Return the callable serving method C{name}.

        @raise MethodNotFound: if the handler does not expose that name.
        """
        raise NotImplementedError

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        """
        Return the handler's C{on_error} hook, or L{None} when it has none.

        @param function: The callable that served the request, when known:
            for a class handler, the hook of the same instance is returned.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} for {self.description}>"


def _hook_of(owner: Any) -> Callable[..., Any] | None:
    attribute = inspect.getattr_static(owner, ERROR_HOOK, _MISSING)
    if attribute is _MISSING or not (callable(attribute) or isinstance(attribute, (staticmethod, classmethod))):
        return None
    hook: Callable[..., Any] = getattr(owner, ERROR_HOOK)
    return hook


class _ClassDispatcher(Dispatcher):
    def resolve(self, name: str) -> Callable[..., Any]:
        _static_attribute(self.handler, _check_public(name), self.description)
        instance = self.handler()
        method: Callable[..., Any] = getattr(instance, name)
        return method

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        if _hook_of(self.handler) is None:
            return None
        instance = getattr(function, "__self__", None)
        if not isinstance(instance, self.handler):
            # The request failed before or without an instance of its own
            # (a static method served it, or its constructor raised).
            try:
                instance = self.handler()
            except Exception:
                return None
        return _hook_of(instance)


class _ObjectDispatcher(Dispatcher):
    def resolve(self, name: str) -> Callable[..., Any]:
        _static_attribute(self.handler, _check_public(name), self.description)
        method: Callable[..., Any] = getattr(self.handler, name)
        if not callable(method):
            raise MethodNotFound(f"{self.description} attribute {name!r} is not callable")
        return method

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        return _hook_of(self.handler)


class _ModuleDispatcher(Dispatcher):
    def __init__(self, handler: ModuleType, description: str) -> None:
        super().__init__(handler, description)
        exported = getattr(handler, "__all__", None)
        self._exported = frozenset(exported) if exported is not None else None

    def resolve(self, name: str) -> Callable[..., Any]:
        name = _check_public(name)
        if self._exported is not None and name not in self._exported:
            raise MethodNotFound(f"{self.description} does not export {name!r} in __all__")
        function = self.handler.__dict__.get(name, _MISSING)
        if function is _MISSING:
            raise MethodNotFound(f"{self.description} has no function {name!r}")
        if not inspect.isroutine(function):
            raise MethodNotFound(f"{self.description} attribute {name!r} is not a function")
        if self._exported is None and getattr(function, "__module__", None) != self.handler.__name__:
            raise MethodNotFound(
                f"{self.description} attribute {name!r} is imported from another module; "
                f"list it in __all__ to expose it"
            )
        result: Callable[..., Any] = function
        return result

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        hook = self.handler.__dict__.get(ERROR_HOOK)
        return hook if inspect.isroutine(hook) else None


class _MappingDispatcher(Dispatcher):
    def resolve(self, name: str) -> Callable[..., Any]:
        name = _check_public(name, identifier=False)
        function = self.handler.get(name, _MISSING)
        if function is _MISSING:
            raise MethodNotFound(f"{self.description} has no method {name!r}")
        if not callable(function):
            raise MethodNotFound(f"{self.description} entry {name!r} is not callable")
        result: Callable[..., Any] = function
        return result

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        hook = self.handler.get(ERROR_HOOK)
        return hook if callable(hook) else None


def make_dispatcher(handler: Any) -> Dispatcher:
    """
    Wrap C{handler} in the L{Dispatcher} for its kind.

    @raise InvalidHandler: if C{handler} is L{None}.
    """
    if handler is None:
        raise InvalidHandler("handler is None: pass a class, a module, a mapping or an object")
    if isinstance(handler, Dispatcher):
        return handler
    if isinstance(handler, type):
        return _ClassDispatcher(handler, f"handler class {handler.__qualname__}")
    if isinstance(handler, ModuleType):
        return _ModuleDispatcher(handler, f"handler module {handler.__name__}")
    if isinstance(handler, Mapping):
        return _MappingDispatcher(handler, "handler mapping")
    return _ObjectDispatcher(handler, f"handler {type(handler).__qualname__} object")


def load_handler(path: str) -> Any:
    """
    Import the handler named by C{path}, such as C{mypackage.echo.Echo} or
    C{mypackage.echo}.

    The longest importable prefix of C{path} is imported as a module and the
    rest is looked up as attributes of it.

    @raise InvalidHandler: with a one-line message naming C{path}, if it
        cannot be imported or names nothing.
    """
    if not isinstance(path, str) or not path or not all(part.isidentifier() for part in path.split(".")):
        raise InvalidHandler(f"invalid handler path {path!r}: expected module.attribute, such as mymod.Echo")
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        module_name = ".".join(parts[:split])
        try:
            target: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
                continue
            raise InvalidHandler(f"cannot import handler {path!r}: {type(e).__name__}: {e}") from e
        except Exception as e:
            raise InvalidHandler(f"cannot import handler {path!r}: {type(e).__name__}: {e}") from e
        for depth, attribute in enumerate(parts[split:], start=split):
            try:
                target = getattr(target, attribute)
            except AttributeError:
                owner = ".".join(parts[:depth])
                raise InvalidHandler(f"cannot import handler {path!r}: {owner!r} has no attribute {attribute!r}") from None
        return target
    raise InvalidHandler(f"cannot import handler {path!r}: no module named {parts[0]!r}")


def call_handler(function: Callable[..., Any], *arguments: Any) -> defer.Deferred[Any]:
    """
    Call C{function(*arguments)} and return a Deferred for its outcome.

    The function may return a value, a Deferred, or a coroutine (or other
    awaitable), which is started here, in the caller's context.
    """
    try:
        result = function(*arguments)
    except BaseException:
        # SystemExit, KeyboardInterrupt or asyncio.CancelledError from a
        # handler is reported like any other exception, never passed up into
        # the AMQP engine.  The reactor handles SIGINT itself.
        return defer.fail()
    if isinstance(result, defer.Deferred):
        return result
    if inspect.iscoroutine(result):
        return defer.Deferred.fromCoroutine(result)
    if inspect.isawaitable(result):
        awaitable = result

        async def wait() -> Any:
            return await awaitable

        return defer.Deferred.fromCoroutine(wait())
    return defer.succeed(result)
