"""
A handler module for the dispatch tests.
"""

from json import dumps

__all__ = ["double", "echo_meta", "hidden_from_all_list"]

dumps = dumps


def double(value):
    return value * 2


def echo_meta(value):
    import txass

    return txass.current_request().meta


def hidden_from_all_list(value):
    return value


def _private(value):
    return value


def not_exported(value):
    return value
