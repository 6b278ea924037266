"""
Tests of the public facade and the packaging of the twistd plugin.
"""

import glob
import os
import subprocess
import sys
import zipfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

import txass
from tests.support import TOP


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
            "RPCClient",
            "RequestContext",
            "RemoteError",
            "TxassError",
            "ConnectionFailed",
            "AuthenticationFailed",
            "VhostNotFound",
            "ConnectionLost",
            "CallTimeout",
            "ServiceNotFound",
            "InvalidReply",
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

    def test_wheel_has_no_plugins_package(self) -> None:
        """
        When the distribution is built, then it contains the plugin module but
        no twisted/plugins/__init__.py, which would hide other plugins.
        """
        target = self.mktemp()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", target, TOP],
            check=True,
            capture_output=True,
            timeout=300,
        )
        [wheel] = glob.glob(os.path.join(target, "txass-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/txass_plugin.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertIn("txass/py.typed", names)
