"""
Worker processes that measure other RPC libraries on the same broker.

Each module runs as C{python -m peers.NAME} with C{bench/} as the current
directory, in the virtual environment of its library, and prints its
results as one JSON object on standard output.
"""
