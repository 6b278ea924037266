"""
Tests for handler dispatch and handler import paths.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests import handler_module, handler_module_plain
from txass._handler import call_handler, load_handler, make_dispatcher
from txass.errors import InvalidHandler, MethodNotFound


class Counting:
    """
    A handler class that counts its instances.
    """

    created = 0
    constant = 5

    def __init__(self) -> None:
        Counting.created += 1

    def echo(self, value: Any) -> Any:
        return value

    @staticmethod
    def static(value: Any) -> Any:
        return ("static", value)

    @property
    def prop(self) -> Any:
        raise AssertionError("a property must never run")

    def _secret(self, value: Any) -> Any:
        raise AssertionError("a private method must never run")


class Guarded:
    """
    An object whose every attribute access outside the class is recorded.
    """

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.looked_up.append(name)
        raise AttributeError(name)

    def hello(self, value: Any) -> str:
        return f"hello {value}"


class DispatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        Counting.created = 0

    def test_class_fresh_instance(self) -> None:
        """
        When the handler is a class, then each resolved method belongs to a
        new instance.
        """
        dispatcher = make_dispatcher(Counting)
        first = dispatcher.resolve("echo")
        second = dispatcher.resolve("echo")
        self.assertEqual(Counting.created, 2)
        self.assertIsNot(first.__self__, second.__self__)  # type: ignore[attr-defined]
        self.assertEqual(first(3), 3)

    def test_class_static_method(self) -> None:
        """
        When a class handler has a static method, then it can be called.
        """
        self.assertEqual(make_dispatcher(Counting).resolve("static")(1), ("static", 1))

    def test_class_rejects_without_running_code(self) -> None:
        """
        When a class handler is asked for a private, missing, non-callable
        or property name, then MethodNotFound is raised and no instance is
        created.
        """
        dispatcher = make_dispatcher(Counting)
        for name in ["_secret", "__init__", "__class__", "missing", "constant", "prop", "echo.__call__", "", "a b"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)
        self.assertEqual(Counting.created, 0)

    def test_object_shared_instance(self) -> None:
        """
        When the handler is an object, then every method is bound to that
        one instance.
        """
        handler = Guarded()
        method = make_dispatcher(handler).resolve("hello")
        self.assertIs(method.__self__, handler)  # type: ignore[attr-defined]
        self.assertEqual(method("you"), "hello you")

    def test_object_getattr_not_run(self) -> None:
        """
        When an object handler defines __getattr__, then a missing name is
        rejected without calling it.
        """
        handler = Guarded()
        self.assertRaises(MethodNotFound, make_dispatcher(handler).resolve, "anything")
        self.assertEqual(handler.looked_up, [])

    def test_object_inherited_from_object(self) -> None:
        """
        When a name comes from object itself, then it is rejected.
        """
        dispatcher = make_dispatcher(Guarded())
        for name in ["__init__", "__reduce__", "__subclasshook__", "mro"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)

    def test_module_with_all(self) -> None:
        """
        When a module defines __all__, then only the functions listed there
        are reachable.
        """
        dispatcher = make_dispatcher(handler_module)
        self.assertEqual(dispatcher.resolve("double")(4), 8)
        for name in ["not_exported", "_private", "dumps", "missing"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)

    def test_module_without_all(self) -> None:
        """
        When a module has no __all__, then its own public functions are
        reachable but imported functions and constants are not.
        """
        dispatcher = make_dispatcher(handler_module_plain)
        self.assertEqual(dispatcher.resolve("triple")(2), 6)
        for name in ["dumps", "CONSTANT", "_private"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)

    def test_mapping(self) -> None:
        """
        When the handler is a mapping, then its public callable entries are
        reachable.
        """
        dispatcher = make_dispatcher({"add-one": lambda x: x + 1, "_hidden": len, "value": 3})
        self.assertEqual(dispatcher.resolve("add-one")(1), 2)
        self.assertRaises(MethodNotFound, dispatcher.resolve, "_hidden")
        self.assertRaises(MethodNotFound, dispatcher.resolve, "value")
        self.assertRaises(MethodNotFound, dispatcher.resolve, "missing")

    def test_none_rejected(self) -> None:
        """
        When the handler is None, then InvalidHandler is raised.
        """
        self.assertRaises(InvalidHandler, make_dispatcher, None)


class CallHandlerTests(SynchronousTestCase):
    def test_plain_value(self) -> None:
        """
        When the method returns a value, then the Deferred fires with it.
        """
        self.assertEqual(self.successResultOf(call_handler(lambda x: x + 1, 1)), 2)

    def test_deferred(self) -> None:
        """
        When the method returns a Deferred, then its result is the outcome.
        """
        pending: defer.Deferred[int] = defer.Deferred()
        d = call_handler(lambda x: pending, 1)
        self.assertNoResult(d)
        pending.callback(7)
        self.assertEqual(self.successResultOf(d), 7)

    def test_coroutine(self) -> None:
        """
        When the method is a coroutine function, then its return value is
        the outcome.
        """

        async def method(value: int) -> int:
            return value * 10

        self.assertEqual(self.successResultOf(call_handler(method, 2)), 20)

    def test_raises(self) -> None:
        """
        When the method raises, then the Deferred fails with that exception.
        """

        def method(value: Any) -> Any:
            raise KeyError(value)

        self.failureResultOf(call_handler(method, "k"), KeyError)

    def test_other_awaitable(self) -> None:
        """
        When the method returns an awaitable that is not a coroutine, then
        it is awaited.
        """

        class Immediate:
            def __await__(self):  # type: ignore[no-untyped-def]
                if False:
                    yield
                return "done"

        self.assertEqual(self.successResultOf(call_handler(lambda _: Immediate(), None)), "done")


class LoadHandlerTests(SynchronousTestCase):
    def test_attribute_of_module(self) -> None:
        """
        When the path names a class in a module, then the class is returned.
        """
        self.assertIs(load_handler("tests.test_handler.Counting"), Counting)

    def test_module(self) -> None:
        """
        When the path names a module, then the module is returned.
        """
        self.assertIs(load_handler("tests.handler_module"), handler_module)

    def test_errors_name_the_path(self) -> None:
        """
        When a path cannot be imported or names nothing, then
        InvalidHandler names the path on one line.
        """
        for path in ["nosuchmodule.Echo", "tests.test_handler.Missing", "tests.nosuch.Echo", "", "a..b", "1x"]:
            with self.subTest(path=path):
                error = self.assertRaises(InvalidHandler, load_handler, path)
                self.assertIn(repr(path), str(error))
                self.assertNotIn("\n", str(error))

    def test_broken_module(self) -> None:
        """
        When the module raises while importing, then InvalidHandler reports
        that error, not a missing module.
        """
        error = self.assertRaises(InvalidHandler, load_handler, "tests.stages.broken_import.Handler")
        self.assertIn("ModuleNotFoundError", str(error))
        self.assertIn("a_dependency_that_is_not_installed", str(error))
