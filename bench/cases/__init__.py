"""
Worker processes that measure txass and the pika Twisted adapter beneath it.

Each module runs as C{python -m cases.NAME} with C{bench/} as the current
directory, and prints its results as one JSON object on standard output.
"""
