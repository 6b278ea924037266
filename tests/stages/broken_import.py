"""
A handler module whose import fails, for the handler loading tests.
"""

import a_dependency_that_is_not_installed  # noqa: F401


class Handler:
    def foo(self, value):
        return value
