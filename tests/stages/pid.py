"""
A handler that replies with the serving process's id, for the tests that
run several stage processes.
"""

import os

from twisted.internet import reactor, task


class Pid:
    def pid(self, value):
        # A short delay keeps requests in flight, so that every stage gets
        # a share of them.
        return task.deferLater(reactor, 0.02, lambda: [os.getpid(), value])
