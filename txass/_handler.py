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

Two allow-lists narrow this further, and both are checked the same static
way.  When any method of a handler's class, any function of a handler module
or any value of a handler mapping is marked with L{expose}, only marked ones
are reachable.  When L{make_dispatcher} gets C{expose=names}, only those
names are reachable.  Given both, a name must be listed and marked.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MethodType, ModuleType
from typing import Any, TypeVar

from twisted.internet import defer

from txass.errors import InvalidHandler, MethodNotFound

_MISSING = object()

# The name of a handler's error hook, which requests cannot call.
ERROR_HOOK = "on_error"

# The attribute that expose() sets to True on a function.
EXPOSED_MARK = "__txass_exposed__"

T = TypeVar("T")


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
    if isinstance(owner, type):
        # A class's own namespace and its bases', not its metaclass's:
        # getattr_static on a class also finds the metaclass's methods,
        # such as register() of every abc.ABC subclass.
        attribute = next((vars(base)[name] for base in owner.__mro__ if name in vars(base)), _MISSING)
    else:
        attribute = inspect.getattr_static(owner, name, _MISSING)
    if attribute is _MISSING:
        raise MethodNotFound(f"{described} has no method {name!r}")
    if inspect.getattr_static(object, name, _MISSING) is attribute:
        raise MethodNotFound(f"method {name!r} is inherited from object and cannot be called")
    if not callable(attribute) and not isinstance(attribute, (staticmethod, classmethod)):
        raise MethodNotFound(f"{described} attribute {name!r} is not callable")
    if isinstance(attribute, type):
        raise MethodNotFound(f"{described} attribute {name!r} is a class, not a method")
    return attribute


def expose(function: T) -> T:
    """
    Mark a handler method, or a function of a handler module, as one that
    requests may call.

    Once any method of a handler class (or of a handler object's class), any
    function of a handler module or any value of a handler mapping carries
    the mark, only marked ones can be called: a request for any other gets
    L{MethodNotFound}.  The function comes back unchanged apart from the
    mark attribute, so it still works when called directly.

    A static or class method is marked through the function it wraps, so
    C{@expose} may sit above or below C{@staticmethod} and C{@classmethod}.
    L{txass.in_thread} may sit above or below it as well, because
    C{functools.wraps} copies the mark to the wrapper.

    @raise TypeError: if C{function} is a class, a bound method, not
        callable, or an object that takes no attributes, such as a builtin
        function.
    """
    target: Any = function
    if isinstance(target, (staticmethod, classmethod)):
        target = target.__func__
    if isinstance(target, MethodType):
        raise TypeError(f"expose cannot mark the bound method {target!r}: decorate the function in its class instead")
    if isinstance(target, type) or not callable(target):
        raise TypeError(f"expose marks a function or method, not {target!r}")
    try:
        setattr(target, EXPOSED_MARK, True)
    except (AttributeError, TypeError):
        raise TypeError(f"expose cannot mark {target!r}: it does not accept attributes") from None
    return function


def _is_exposed(attribute: Any) -> bool:
    # getattr_static, because a handler's attribute may be any object, and
    # one with __getattr__ (a mock, a proxy) would claim every attribute.
    if isinstance(attribute, (staticmethod, classmethod, MethodType)):
        attribute = attribute.__func__
    return inspect.getattr_static(attribute, EXPOSED_MARK, False) is True


def _exposed_names(expose: Iterable[str] | None) -> tuple[str, ...] | None:
    if expose is None:
        return None
    if isinstance(expose, (str, bytes)):
        raise InvalidHandler(f"expose must be an iterable of method names, not the {type(expose).__name__} {expose!r}")
    try:
        iterator = iter(expose)
    except TypeError:
        raise InvalidHandler(f"expose must be an iterable of method names, not {expose!r}") from None
    names = tuple(iterator)
    if not names:
        raise InvalidHandler("expose is empty: name at least one method, or pass None to allow every public method")
    for name in names:
        if not isinstance(name, str):
            raise InvalidHandler(f"expose must contain method names as strings, not {name!r}")
    return names


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


class _CheckedDispatcher(Dispatcher):
    """
    The base of the dispatchers for classes, objects, modules and mappings,
    which applies the default rules, the C{expose} marks and the C{expose}
    list to each method name.
    """

    # Whether method names must be Python identifiers (all kinds but
    # mappings).
    identifiers_only = True

    def __init__(self, handler: Any, description: str) -> None:
        super().__init__(handler, description)
        self._exposed_names: frozenset[str] | None = None
        self._marked_only = False
        # Names that passed every check on a class or object handler, whose
        # static lookups cost more than the rest of a request's dispatch.
        # Only attributes of the handler can enter, so it stays small.
        self._accepted: set[str] = set()
        for name, value in self._members():
            if not _is_exposed(value):
                continue
            # A mark on a name that requests can never call is a mistake in
            # the handler, so it fails here rather than on each request.
            try:
                _check_public(name, identifier=self.identifiers_only)
            except MethodNotFound as e:
                raise InvalidHandler(f"{self.description} cannot expose {name!r}: {e}") from None
            self._marked_only = True

    def _members(self) -> Iterator[tuple[object, Any]]:
        """
        Yield the names and values whose C{expose} marks make the handler
        strict.
        """
        raise NotImplementedError

    def _find(self, name: str) -> Any:
        """
        Return the attribute for the public name C{name}, found without
        running handler code.

        @raise MethodNotFound: if the default rules reject the name.
        """
        raise NotImplementedError

    def _check(self, name: str) -> Any:
        """
        Return the attribute for C{name} once every rule accepts it.

        @raise MethodNotFound: naming the rule that rejects it.
        """
        name = _check_public(name, identifier=self.identifiers_only)
        if self._exposed_names is not None and name not in self._exposed_names:
            raise MethodNotFound(f"method {name!r} of {self.description} is not exposed: it is not in the expose list")
        attribute = self._find(name)
        if self._marked_only and not _is_exposed(attribute):
            raise MethodNotFound(
                f"method {name!r} of {self.description} is not exposed: "
                f"only methods marked with @txass.expose can be called"
            )
        return attribute

    def limit_to(self, names: tuple[str, ...]) -> None:
        """
        Allow requests to call only C{names}.

        @raise InvalidHandler: naming the first name that could not be
            called: missing, private, not callable, the error hook, or
            unmarked in a handler whose methods carry C{expose} marks.
        """
        for name in names:
            try:
                attribute = self._find(_check_public(name, identifier=self.identifiers_only))
            except MethodNotFound as e:
                raise InvalidHandler(f"{self.description} cannot expose {name!r}: {e}") from None
            if self._marked_only and not _is_exposed(attribute):
                raise InvalidHandler(
                    f"{self.description} cannot expose {name!r}: it is not marked with @txass.expose, "
                    f"and this handler allows only its marked methods"
                )
        self._exposed_names = frozenset(names)
        self._accepted.clear()


def _class_members(cls: type) -> Iterator[tuple[str, Any]]:
    for owner in cls.__mro__:
        if owner is not object:
            yield from vars(owner).items()


class _ClassDispatcher(_CheckedDispatcher):
    def _members(self) -> Iterator[tuple[object, Any]]:
        return _class_members(self.handler)

    def _find(self, name: str) -> Any:
        return _static_attribute(self.handler, name, self.description)

    def resolve(self, name: str) -> Callable[..., Any]:
        if name not in self._accepted:
            self._check(name)
            self._accepted.add(name)
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


class _ObjectDispatcher(_CheckedDispatcher):
    def _members(self) -> Iterator[tuple[object, Any]]:
        return _class_members(type(self.handler))

    def _find(self, name: str) -> Any:
        return _static_attribute(self.handler, name, self.description)

    def resolve(self, name: str) -> Callable[..., Any]:
        if name not in self._accepted:
            self._check(name)
            self._accepted.add(name)
        method: Callable[..., Any] = getattr(self.handler, name)
        if not callable(method):
            raise MethodNotFound(f"{self.description} attribute {name!r} is not callable")
        return method

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        return _hook_of(self.handler)


class _ModuleDispatcher(_CheckedDispatcher):
    def __init__(self, handler: ModuleType, description: str) -> None:
        exported = handler.__dict__.get("__all__")
        try:
            self._exported = frozenset(exported) if exported is not None else None
        except TypeError:
            raise InvalidHandler(f"{description}: __all__ must be a list of names, not {exported!r}") from None
        if self._exported is not None and not all(isinstance(name, str) for name in self._exported):
            raise InvalidHandler(f"{description}: __all__ must be a list of names, not {exported!r}")
        super().__init__(handler, description)

    def _members(self) -> Iterator[tuple[object, Any]]:
        # Only the module's own functions and the names in __all__ count.  A
        # marked function that the module imports, such as one from another
        # handler module, does not make this module strict.
        for name, value in vars(self.handler).items():
            listed = self._exported is not None and name in self._exported
            if listed or (inspect.isroutine(value) and getattr(value, "__module__", None) == self.handler.__name__):
                yield name, value

    def _find(self, name: str) -> Any:
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
        return function

    def resolve(self, name: str) -> Callable[..., Any]:
        function: Callable[..., Any] = self._check(name)
        return function

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        hook = self.handler.__dict__.get(ERROR_HOOK)
        return hook if inspect.isroutine(hook) else None


class _MappingDispatcher(_CheckedDispatcher):
    identifiers_only = False

    def _members(self) -> Iterator[tuple[object, Any]]:
        return iter(self.handler.items())

    def _find(self, name: str) -> Any:
        function = self.handler.get(name, _MISSING)
        if function is _MISSING:
            raise MethodNotFound(f"{self.description} has no method {name!r}")
        if not callable(function):
            raise MethodNotFound(f"{self.description} entry {name!r} is not callable")
        return function

    def resolve(self, name: str) -> Callable[..., Any]:
        function: Callable[..., Any] = self._check(name)
        return function

    def error_hook(self, function: Callable[..., Any] | None) -> Callable[..., Any] | None:
        hook = self.handler.get(ERROR_HOOK)
        return hook if callable(hook) else None


def make_dispatcher(handler: Any, expose: Iterable[str] | None = None) -> Dispatcher:
    """
    Wrap C{handler} in the L{Dispatcher} for its kind.

    Whether the handler carries C{expose} marks is decided here, from the
    methods it has now.

    @param expose: The names of the only methods that requests may call,
        or L{None} to allow every method that the default rules and the
        C{expose} marks allow.  Each name must pass those rules too, which
        is checked here.
    @raise InvalidHandler: if C{handler} is L{None}, if C{expose} is not a
        non-empty iterable of strings or names a method that could not be
        called, if C{expose} comes with a L{Dispatcher}, or if the handler
        marks with C{expose} a private name or C{on_error}.
    """
    if handler is None:
        raise InvalidHandler("handler is None: pass a class, a module, a mapping or an object")
    names = _exposed_names(expose)
    if isinstance(handler, Dispatcher):
        if names is not None:
            raise InvalidHandler(
                f"expose cannot apply to {handler!r}, which is already a Dispatcher: pass the handler itself"
            )
        return handler
    dispatcher: _CheckedDispatcher
    if isinstance(handler, type):
        dispatcher = _ClassDispatcher(handler, f"handler class {handler.__qualname__}")
    elif isinstance(handler, ModuleType):
        dispatcher = _ModuleDispatcher(handler, f"handler module {handler.__name__}")
    elif isinstance(handler, Mapping):
        dispatcher = _MappingDispatcher(handler, "handler mapping")
    else:
        dispatcher = _ObjectDispatcher(handler, f"handler {type(handler).__qualname__} object")
    if names is not None:
        dispatcher.limit_to(names)
    return dispatcher


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
