"""
Tests of the public facade and the packaging of the twistd plugin.
"""

from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import txass
from twisted.application.service import IServiceMaker


class FacadeTests(SynchronousTestCase):
    def test_exports(self) -> None:
        """
        When txass is imported, then it exports the documented names and
        each one exists.
        """
        documented = {
            "connect",
            "current_request",
            "Broker",
            "Service",
            "Server",
            "Client",
            "RequestContext",
            "RemoteError",
            "TxassError",
            "ConnectionFailed",
            "AuthenticationFailed",
            "VhostNotFound",
            "ConnectionLost",
            "InvalidHandler",
            "MethodNotFound",
        }
        self.assertLessEqual(documented, set(txass.__all__))
        for name in txass.__all__:
            self.assertTrue(hasattr(txass, name), name)

    def test_errors_share_base(self) -> None:
        """
        When an exception class is exported, then it derives from
        TxassError.
        """
        for name in txass.__all__:
            value = getattr(txass, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                self.assertTrue(issubclass(value, txass.TxassError), name)

    def test_twistd_plugin(self) -> None:
        """
        When twistd looks for service makers, then it finds "ass".
        """
        names = [maker.tapname for maker in getPlugins(IServiceMaker)]
        self.assertIn("ass", names)
