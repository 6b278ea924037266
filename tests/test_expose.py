"""
Tests for the strict forms of handler dispatch: the expose decorator and
the expose list of make_dispatcher.
"""

from __future__ import annotations

import textwrap
import threading
from types import ModuleType
from typing import Any

from twisted.trial.unittest import SynchronousTestCase, TestCase

import txass
from tests import handler_module
from txass._context import in_thread
from txass._handler import EXPOSED_MARK, Dispatcher, call_handler, expose, make_dispatcher
from txass.errors import InvalidHandler, MethodNotFound


class Strict:
    """
    A handler class with marked methods of every kind, and unmarked ones
    that must never run.
    """

    created = 0
    constant = 5

    def __init__(self) -> None:
        Strict.created += 1

    @expose
    def marked(self, value: Any) -> Any:
        return ("marked", value)

    @expose
    async def marked_async(self, value: Any) -> Any:
        return ("async", value)

    @expose
    @staticmethod
    def static_above(value: Any) -> Any:
        return ("static above", value)

    @staticmethod
    @expose
    def static_below(value: Any) -> Any:
        return ("static below", value)

    @expose
    @classmethod
    def class_above(cls, value: Any) -> Any:
        return (cls.__name__, "above", value)

    @classmethod
    @expose
    def class_below(cls, value: Any) -> Any:
        return (cls.__name__, "below", value)

    def unmarked(self, value: Any) -> Any:
        raise AssertionError("an unmarked method must never run")

    @staticmethod
    def unmarked_static(value: Any) -> Any:
        raise AssertionError("an unmarked static method must never run")

    @property
    def prop(self) -> Any:
        raise AssertionError("a property must never run")

    def _private(self, value: Any) -> Any:
        raise AssertionError("a private method must never run")

    def on_error(self, exception: BaseException, request: Any) -> None:
        pass


class StrictChild(Strict):
    """
    A subclass that overrides a marked method without marking it.
    """

    def marked(self, value: Any) -> Any:
        raise AssertionError("an unmarked override must never run")


class Plain:
    """
    A handler class without marks.
    """

    created = 0

    def __init__(self) -> None:
        Plain.created += 1

    def echo(self, value: Any) -> Any:
        return ("echo", value)

    def other(self, value: Any) -> Any:
        return ("other", value)

    @property
    def prop(self) -> Any:
        raise AssertionError("a property must never run")

    def _secret(self, value: Any) -> Any:
        raise AssertionError("a private method must never run")

    def on_error(self, exception: BaseException, request: Any) -> None:
        pass


class StrictObject:
    """
    A handler object with a marked method, whose every attribute access
    outside the class is recorded.
    """

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def __getattr__(self, name: str) -> Any:
        self.looked_up.append(name)
        raise AttributeError(name)

    @expose
    def hello(self, value: Any) -> str:
        return f"hello {value}"

    def goodbye(self, value: Any) -> str:
        raise AssertionError("an unmarked method must never run")


class Threaded:
    """
    A handler class whose methods run in the reactor's thread pool.
    """

    @expose
    @in_thread
    def expose_above(self, value: Any) -> Any:
        return ("expose above", value, threading.get_ident())

    @in_thread
    @expose
    def expose_below(self, value: Any) -> Any:
        return ("expose below", value, threading.get_ident())

    @in_thread
    def unmarked(self, value: Any) -> Any:
        raise AssertionError("an unmarked method must never run")


@expose
def marked_elsewhere(value: Any) -> Any:
    return value


def module_from_source(name: str, source: str) -> ModuleType:
    """
    Return a new module named C{name} that runs C{source}, so that its
    functions belong to it.
    """
    module = ModuleType(name)
    exec(textwrap.dedent(source), vars(module))
    return module


STRICT_MODULE = """
    from txass._context import in_thread
    from txass._handler import expose


    @expose
    def double(value):
        return value * 2


    @expose
    async def double_async(value):
        return value * 2


    @expose
    @in_thread
    def threaded_above(value):
        return value


    @in_thread
    @expose
    def threaded_below(value):
        return value


    def unmarked(value):
        raise AssertionError("an unmarked function must never run")


    def on_error(exception, request):
        pass
"""

STRICT_MODULE_WITH_ALL = """
    from txass._handler import expose

    __all__ = ["listed_marked", "listed_unmarked"]


    @expose
    def listed_marked(value):
        return value


    def listed_unmarked(value):
        raise AssertionError("an unmarked function must never run")


    @expose
    def marked_unlisted(value):
        raise AssertionError("a function missing from __all__ must never run")
"""

IMPORTING_MODULE = """
    from tests.test_expose import marked_elsewhere


    def own(value):
        return ("own", value)
"""


class ExposeDecoratorTests(SynchronousTestCase):
    def test_returns_function_unchanged(self) -> None:
        """
        When a function is marked, then expose returns that same function,
        which still runs when called directly.
        """

        def function(value: Any) -> Any:
            return value + 1

        self.assertIs(expose(function), function)
        self.assertIs(getattr(function, EXPOSED_MARK), True)
        self.assertEqual(function(1), 2)

    def test_marked_methods_run_directly(self) -> None:
        """
        When marked methods are called without a dispatcher, then they
        behave as undecorated ones.
        """
        self.assertEqual(Strict().marked(1), ("marked", 1))
        self.assertEqual(Strict.static_above(2), ("static above", 2))
        self.assertEqual(Strict.static_below(3), ("static below", 3))
        self.assertEqual(Strict.class_above(4), ("Strict", "above", 4))
        self.assertEqual(Strict.class_below(5), ("Strict", "below", 5))

    def test_rejects_unmarkable(self) -> None:
        """
        When expose gets a class, a bound method, a builtin function or a
        value that is not callable, then it raises TypeError.
        """
        for value in [Plain, Plain().echo, len, 5, Plain.__dict__["prop"]]:
            with self.subTest(value=value):
                self.assertRaises(TypeError, expose, value)
        self.assertFalse(hasattr(Plain, EXPOSED_MARK))
        self.assertFalse(hasattr(Plain.echo, EXPOSED_MARK))


class StrictClassTests(SynchronousTestCase):
    def setUp(self) -> None:
        Strict.created = 0

    def test_marked_methods_callable(self) -> None:
        """
        When a class handler marks methods, then plain, static and class
        methods marked in either order with @staticmethod or @classmethod
        are callable.
        """
        dispatcher = make_dispatcher(Strict)
        self.assertEqual(dispatcher.resolve("marked")(1), ("marked", 1))
        self.assertEqual(dispatcher.resolve("static_above")(2), ("static above", 2))
        self.assertEqual(dispatcher.resolve("static_below")(3), ("static below", 3))
        self.assertEqual(dispatcher.resolve("class_above")(4), ("Strict", "above", 4))
        self.assertEqual(dispatcher.resolve("class_below")(5), ("Strict", "below", 5))

    def test_marked_async_method(self) -> None:
        """
        When a marked method is a coroutine function, then its result is the
        outcome.
        """
        method = make_dispatcher(Strict).resolve("marked_async")
        self.assertEqual(self.successResultOf(call_handler(method, 6)), ("async", 6))

    def test_unmarked_public_rejected(self) -> None:
        """
        When a class handler marks methods, then an unmarked public method
        is not exposed, and no instance is created to find that out.
        """
        dispatcher = make_dispatcher(Strict)
        for name in ["unmarked", "unmarked_static"]:
            with self.subTest(name=name):
                error = self.assertRaises(MethodNotFound, dispatcher.resolve, name)
                self.assertIn("is not exposed", str(error))
                self.assertIn(repr(name), str(error))
        self.assertEqual(Strict.created, 0)

    def test_default_rules_still_apply(self) -> None:
        """
        When a class handler marks methods, then private, object-inherited,
        missing, non-callable and property names and on_error are still
        rejected without creating an instance.
        """
        dispatcher = make_dispatcher(Strict)
        names = ["_private", "__init__", "__reduce__", "__subclasshook__", "on_error", "missing", "constant", "prop"]
        for name in names:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)
        self.assertEqual(Strict.created, 0)

    def test_error_hook_still_found(self) -> None:
        """
        When a class handler marks methods but not on_error, then on_error
        is still its error hook.
        """
        dispatcher = make_dispatcher(Strict)
        method = dispatcher.resolve("marked")
        hook = dispatcher.error_hook(method)
        self.assertIsNotNone(hook)
        self.assertIs(hook.__self__, method.__self__)  # type: ignore[union-attr]

    def test_unmarked_override_rejected(self) -> None:
        """
        When a subclass overrides a marked method without marking it, then
        the override is not exposed, while inherited marked methods are.
        """
        dispatcher = make_dispatcher(StrictChild)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "marked")
        self.assertIn("is not exposed", str(error))
        self.assertEqual(dispatcher.resolve("static_above")(1), ("static above", 1))
        self.assertEqual(dispatcher.resolve("class_below")(2), ("StrictChild", "below", 2))

    def test_marked_private_or_hook_invalid(self) -> None:
        """
        When a class marks a private method or on_error, then
        make_dispatcher raises InvalidHandler naming it.
        """

        class MarksPrivate:
            @expose
            def _hidden(self, value: Any) -> Any:
                return value

        class MarksHook:
            @expose
            def on_error(self, exception: BaseException, request: Any) -> None:
                pass

        for handler, name in [(MarksPrivate, "_hidden"), (MarksHook, "on_error")]:
            with self.subTest(name=name):
                error = self.assertRaises(InvalidHandler, make_dispatcher, handler)
                self.assertIn(repr(name), str(error))


class StrictObjectTests(SynchronousTestCase):
    def test_marked_method_bound_to_object(self) -> None:
        """
        When the class of a handler object marks a method, then that method
        is callable on the shared instance.
        """
        handler = StrictObject()
        method = make_dispatcher(handler).resolve("hello")
        self.assertIs(method.__self__, handler)  # type: ignore[attr-defined]
        self.assertEqual(method("you"), "hello you")

    def test_unmarked_rejected_statically(self) -> None:
        """
        When the class of a handler object marks a method, then unmarked,
        missing and private names are rejected without running
        __getattr__.
        """
        handler = StrictObject()
        dispatcher = make_dispatcher(handler)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "goodbye")
        self.assertIn("is not exposed", str(error))
        for name in ["missing", "_private", "__reduce__", "mro", "on_error"]:
            with self.subTest(name=name):
                self.assertRaises(MethodNotFound, dispatcher.resolve, name)
        self.assertEqual(handler.looked_up, [])

    def test_unmarked_instance_attribute_rejected(self) -> None:
        """
        When a strict handler object stores an unmarked function in an
        instance attribute, then it is not exposed, and a marked one is.
        """

        def unmarked(value: Any) -> Any:
            raise AssertionError("an unmarked function must never run")

        @expose
        def marked(value: Any) -> Any:
            return ("instance", value)

        handler = StrictObject()
        handler.unmarked = unmarked  # type: ignore[attr-defined]
        handler.marked = marked  # type: ignore[attr-defined]
        dispatcher = make_dispatcher(handler)
        self.assertRaises(MethodNotFound, dispatcher.resolve, "unmarked")
        self.assertEqual(dispatcher.resolve("marked")(1), ("instance", 1))


class StrictModuleTests(SynchronousTestCase):
    def test_marked_functions_callable(self) -> None:
        """
        When a module handler marks functions, then marked functions are
        callable, plain, async or run in a thread.
        """
        dispatcher = make_dispatcher(module_from_source("expose_strict", STRICT_MODULE))
        self.assertEqual(dispatcher.resolve("double")(4), 8)
        self.assertEqual(self.successResultOf(call_handler(dispatcher.resolve("double_async"), 5)), 10)
        for name in ["threaded_above", "threaded_below"]:
            with self.subTest(name=name):
                self.assertEqual(dispatcher.resolve(name).__name__, name)

    def test_unmarked_function_rejected(self) -> None:
        """
        When a module handler marks functions, then an unmarked public
        function is not exposed, and on_error stays unreachable.
        """
        dispatcher = make_dispatcher(module_from_source("expose_strict", STRICT_MODULE))
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "unmarked")
        self.assertIn("is not exposed", str(error))
        self.assertRaises(MethodNotFound, dispatcher.resolve, "on_error")
        self.assertIsNotNone(dispatcher.error_hook(None))

    def test_all_filters_marked_functions(self) -> None:
        """
        When a module with __all__ marks functions, then a function must be
        both listed and marked.
        """
        dispatcher = make_dispatcher(module_from_source("expose_with_all", STRICT_MODULE_WITH_ALL))
        self.assertEqual(dispatcher.resolve("listed_marked")(1), 1)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "listed_unmarked")
        self.assertIn("is not exposed", str(error))
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "marked_unlisted")
        self.assertIn("__all__", str(error))

    def test_imported_mark_not_strict(self) -> None:
        """
        When a module imports a marked function from another module, then
        the module is not strict, and the imported function stays
        unreachable.
        """
        dispatcher = make_dispatcher(module_from_source("expose_importing", IMPORTING_MODULE))
        self.assertEqual(dispatcher.resolve("own")(1), ("own", 1))
        self.assertRaises(MethodNotFound, dispatcher.resolve, "marked_elsewhere")

    def test_marked_private_invalid(self) -> None:
        """
        When a module marks a private function or on_error, then
        make_dispatcher raises InvalidHandler naming it.
        """
        for name in ["_hidden", "on_error"]:
            with self.subTest(name=name):
                module = module_from_source(
                    "expose_bad",
                    f"""
                    from txass._handler import expose

                    @expose
                    def {name}(*arguments):
                        pass
                    """,
                )
                error = self.assertRaises(InvalidHandler, make_dispatcher, module)
                self.assertIn(repr(name), str(error))


class StrictMappingTests(SynchronousTestCase):
    def test_marked_values_only(self) -> None:
        """
        When a mapping handler contains marked values, then only their keys
        are callable.
        """

        @expose
        def add_one(value: int) -> int:
            return value + 1

        def unmarked(value: Any) -> Any:
            raise AssertionError("an unmarked entry must never run")

        dispatcher = make_dispatcher({"add.one": add_one, "unmarked": unmarked})
        self.assertEqual(dispatcher.resolve("add.one")(1), 2)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "unmarked")
        self.assertIn("is not exposed", str(error))

    def test_marked_private_key_invalid(self) -> None:
        """
        When a mapping contains a marked value under a private key or
        on_error, then make_dispatcher raises InvalidHandler naming it.
        """

        @expose
        def function(*arguments: Any) -> None:
            pass

        for name in ["_hidden", "on_error"]:
            with self.subTest(name=name):
                error = self.assertRaises(InvalidHandler, make_dispatcher, {name: function})
                self.assertIn(repr(name), str(error))


class ExposeListTests(SynchronousTestCase):
    def setUp(self) -> None:
        Plain.created = 0
        Strict.created = 0

    def test_class_only_listed(self) -> None:
        """
        When a class handler gets an expose list, then only listed methods
        are callable, and rejecting another creates no instance.
        """
        dispatcher = make_dispatcher(Plain, expose=["echo"])
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "other")
        self.assertIn("is not exposed", str(error))
        self.assertEqual(Plain.created, 0)
        self.assertEqual(dispatcher.resolve("echo")(1), ("echo", 1))

    def test_object_only_listed(self) -> None:
        """
        When a handler object gets an expose list, then only listed methods
        are callable.
        """
        handler = Plain()
        dispatcher = make_dispatcher(handler, expose=("other",))
        method = dispatcher.resolve("other")
        self.assertIs(method.__self__, handler)  # type: ignore[attr-defined]
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "echo")
        self.assertIn("is not exposed", str(error))

    def test_module_only_listed(self) -> None:
        """
        When a module handler gets an expose list, then only listed
        functions are callable, and __all__ still applies.
        """
        dispatcher = make_dispatcher(handler_module, expose=["double"])
        self.assertEqual(dispatcher.resolve("double")(4), 8)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "echo_meta")
        self.assertIn("is not exposed", str(error))
        error = self.assertRaises(InvalidHandler, make_dispatcher, handler_module, expose=["not_exported"])
        self.assertIn("'not_exported'", str(error))

    def test_mapping_keys_filtered(self) -> None:
        """
        When a mapping handler gets an expose list, then only listed keys
        are callable, including names that are not identifiers.
        """
        dispatcher = make_dispatcher({"add.one": lambda x: x + 1, "other": len}, expose=["add.one"])
        self.assertEqual(dispatcher.resolve("add.one")(1), 2)
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "other")
        self.assertIn("is not exposed", str(error))

    def test_unusable_names_invalid(self) -> None:
        """
        When the expose list names something that could not be called, then
        make_dispatcher raises InvalidHandler naming it, without creating
        an instance or running a property.
        """
        names = ["missing", "_secret", "__init__", "__reduce__", "on_error", "prop", "echo.__call__", "", "a b"]
        for name in names:
            with self.subTest(name=name):
                error = self.assertRaises(InvalidHandler, make_dispatcher, Plain, expose=["echo", name])
                self.assertIn(repr(name), str(error))
        self.assertEqual(Plain.created, 0)

    def test_mapping_missing_key_invalid(self) -> None:
        """
        When the expose list names a key a mapping lacks, a private key, a
        value that is not callable or on_error, then make_dispatcher raises
        InvalidHandler naming it.
        """
        handler = {"add": len, "_hidden": len, "value": 3, "on_error": len}
        for name in ["missing", "_hidden", "value", "on_error"]:
            with self.subTest(name=name):
                error = self.assertRaises(InvalidHandler, make_dispatcher, handler, expose=[name])
                self.assertIn(repr(name), str(error))

    def test_object_inherited_invalid(self) -> None:
        """
        When the expose list of a handler object names an attribute
        inherited from object, then make_dispatcher raises InvalidHandler.
        """
        for name in ["__reduce__", "__subclasshook__", "mro", "__init__"]:
            with self.subTest(name=name):
                error = self.assertRaises(InvalidHandler, make_dispatcher, Plain(), expose=[name])
                self.assertIn(repr(name), str(error))

    def test_list_narrows_marked(self) -> None:
        """
        When a class with marks gets an expose list of some marked methods,
        then only those are callable.
        """
        dispatcher = make_dispatcher(Strict, expose=["static_above"])
        self.assertEqual(dispatcher.resolve("static_above")(1), ("static above", 1))
        error = self.assertRaises(MethodNotFound, dispatcher.resolve, "marked")
        self.assertIn("is not exposed", str(error))

    def test_list_cannot_widen_marked(self) -> None:
        """
        When the expose list of a class with marks names an unmarked
        method, then make_dispatcher raises InvalidHandler naming it.
        """
        error = self.assertRaises(InvalidHandler, make_dispatcher, Strict, expose=["marked", "unmarked"])
        self.assertIn("'unmarked'", str(error))
        self.assertEqual(Strict.created, 0)

    def test_any_iterable_accepted(self) -> None:
        """
        When the expose list is a generator or a set, then its names are
        the allowed ones.
        """
        for names in [(name for name in ["echo"]), {"echo"}]:
            with self.subTest(names=names):
                dispatcher = make_dispatcher(Plain, expose=names)
                self.assertEqual(dispatcher.resolve("echo")(1), ("echo", 1))
                self.assertRaises(MethodNotFound, dispatcher.resolve, "other")

    def test_malformed_list_invalid(self) -> None:
        """
        When expose is bytes, empty, not iterable or contains a non-string,
        then make_dispatcher raises InvalidHandler.
        """
        for expose_value in [b"echo", [], 5, ["echo", 1]]:
            with self.subTest(expose=expose_value):
                self.assertRaises(InvalidHandler, make_dispatcher, Plain, expose=expose_value)

    def test_string_list_invalid(self) -> None:
        """
        When expose is one string, then make_dispatcher raises
        InvalidHandler even where each of its characters names a method.
        """
        error = self.assertRaises(InvalidHandler, make_dispatcher, {"a": len, "b": len}, expose="ab")
        self.assertIn("'ab'", str(error))

    def test_dispatcher_with_list_invalid(self) -> None:
        """
        When make_dispatcher gets a Dispatcher and an expose list, then it
        raises InvalidHandler, because the list would be ignored.
        """
        dispatcher = make_dispatcher(Plain)
        self.assertIsInstance(dispatcher, Dispatcher)
        self.assertRaises(InvalidHandler, make_dispatcher, dispatcher, expose=["echo"])
        self.assertIs(make_dispatcher(dispatcher), dispatcher)


class DefaultRulesTests(SynchronousTestCase):
    def setUp(self) -> None:
        Plain.created = 0

    def test_unmarked_class_exposes_public(self) -> None:
        """
        When a class has no marks and no expose list is given, then every
        public method is callable and private names and on_error are not.
        """
        dispatcher = make_dispatcher(Plain)
        self.assertEqual(dispatcher.resolve("echo")(1), ("echo", 1))
        self.assertEqual(dispatcher.resolve("other")(2), ("other", 2))
        for name in ["_secret", "on_error", "__init__", "prop", "missing"]:
            with self.subTest(name=name):
                error = self.assertRaises(MethodNotFound, dispatcher.resolve, name)
                self.assertNotIn("is not exposed", str(error))

    def test_unmarked_mapping_exposes_callables(self) -> None:
        """
        When a mapping has no marked values, then every public callable
        entry is callable.
        """
        dispatcher = make_dispatcher({"first": len, "second": abs})
        self.assertEqual(dispatcher.resolve("first")("ab"), 2)
        self.assertEqual(dispatcher.resolve("second")(-3), 3)


class InThreadTests(TestCase):
    async def test_marked_in_either_order(self) -> None:
        """
        When in_thread sits above or below expose, then the method is
        callable and runs in a thread of the pool.
        """
        dispatcher = make_dispatcher(Threaded)
        for name in ["expose_above", "expose_below"]:
            label, value, thread = await call_handler(dispatcher.resolve(name), 7)
            self.assertEqual(label, name.replace("_", " "))
            self.assertEqual(value, 7)
            self.assertNotEqual(thread, threading.get_ident())

    def test_unmarked_in_thread_rejected(self) -> None:
        """
        When a strict class has an unmarked in_thread method, then it is
        not exposed.
        """
        error = self.assertRaises(MethodNotFound, make_dispatcher(Threaded).resolve, "unmarked")
        self.assertIn("is not exposed", str(error))

    async def test_module_function_in_thread(self) -> None:
        """
        When a module function is marked above or below in_thread, then it
        runs in a thread of the pool.
        """
        dispatcher = make_dispatcher(module_from_source("expose_strict", STRICT_MODULE))
        for name in ["threaded_above", "threaded_below"]:
            self.assertEqual(await call_handler(dispatcher.resolve(name), name), name)


class FacadeTests(SynchronousTestCase):
    def test_expose_exported(self) -> None:
        """
        The package exports the expose decorator.
        """
        self.assertIs(txass.expose, expose)
        self.assertIn("expose", txass.__all__)
