"""
A handler module without __all__, for the dispatch tests.
"""

from json import dumps

CONSTANT = 3


def triple(value):
    return value * 3


def _private(value):
    return value
