"""
Tests of keeping the broker password out of command lines: the broker URL
read from a file by twistd ass and txass call, and the --expose option of
twistd ass.
"""

from __future__ import annotations

import os
import subprocess

from twisted.python import usage
from twisted.trial import unittest

import txass
from tests import support
from txass._cli import parse_arguments
from txass._connection import read_url_file
from txass._tap import Options

BASE = ["--service", "echo", "--reactor", "examples.echo.Echo"]


class URLFileTests(unittest.TestCase):
    def write(self, text: str, mode: int = 0o600) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(path, mode)
        return path

    def test_first_line(self) -> None:
        """
        The URL is the first non-empty line of the file, without spaces.
        """
        path = self.write("\n  amqp://svc:s3cret@127.0.0.1:5672/%2F  \nignored\n")
        self.assertEqual(read_url_file(path), "amqp://svc:s3cret@127.0.0.1:5672/%2F")

    def test_others_may_read(self) -> None:
        """
        A file that other users may read or change is refused, with a
        message naming the file and how to fix it, never its content.
        """
        for mode in (0o644, 0o640, 0o602):
            with self.subTest(mode=oct(mode)):
                path = self.write("amqp://svc:s3cret@127.0.0.1/", mode)
                with self.assertRaises(txass.InvalidURL) as caught:
                    read_url_file(path)
                self.assertIn("chmod 600", str(caught.exception))
                self.assertNotIn("s3cret", str(caught.exception))

    def test_missing_or_empty(self) -> None:
        """
        A missing file, a directory and an empty file are errors that name
        the path.
        """
        empty = self.write("\n\n")
        directory = self.mktemp()
        os.mkdir(directory)
        for path in (self.mktemp(), directory, empty):
            with self.subTest(path=path):
                with self.assertRaises(txass.InvalidURL) as caught:
                    read_url_file(path)
                self.assertIn(path, str(caught.exception))

    def test_twistd_option(self) -> None:
        """
        twistd ass --broker-file reads the URL from the file, and refuses
        it together with --broker.
        """
        path = self.write("amqp://svc:s3cret@127.0.0.1:5672/%2F\n")
        options = Options()
        options.parseOptions([*BASE, "--broker-file", path])
        self.assertEqual(options["broker"], "amqp://svc:s3cret@127.0.0.1:5672/%2F")
        options = Options()
        with self.assertRaises(usage.UsageError):
            options.parseOptions([*BASE, "--broker-file", path, "--broker", "amqp://127.0.0.1/"])
        options = Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions([*BASE, "--broker-file", self.write("amqp://svc:s3cret@h/", 0o644)])
        self.assertNotIn("s3cret", str(caught.exception))

    def test_call_option(self) -> None:
        """
        txass call --broker-file reads the URL from the file.
        """
        path = self.write("amqp://svc:s3cret@127.0.0.1:5672/%2F\n")
        arguments = parse_arguments(["call", "--broker-file", path, "echo", "foo"])
        self.assertEqual(arguments.url, "amqp://svc:s3cret@127.0.0.1:5672/%2F")

    def test_stage_uses_file(self) -> None:
        """
        A stage started with --broker-file connects to the broker its file
        names: one on a closed port here, so it exits with status 1 naming
        that port, and never shows the password.
        """
        path = os.path.abspath(self.write("amqp://svc:s3cret@127.0.0.1:1/%2F\n"))
        finished = subprocess.run(
            support.twistd_command("-n", "--pidfile=", "ass", *BASE, "--broker-file", path),
            env=support.python_environment(),
            cwd=support.TOP,
            capture_output=True,
            text=True,
            timeout=support.EVENT_TIMEOUT * 2,
        )
        self.assertEqual(finished.returncode, 1, finished.stdout)
        self.assertIn("127.0.0.1:1", finished.stdout)
        self.assertNotIn("s3cret", finished.stdout + finished.stderr)


class ExposeOptionTests(unittest.TestCase):
    def test_expose_list(self) -> None:
        """
        twistd ass --expose takes comma-separated method names, and refuses
        an empty name.
        """
        options = Options()
        options.parseOptions([*BASE, "--expose", "foo, bar"])
        self.assertEqual(options["expose"], ["foo", "bar"])
        for value in ("", "foo,,bar", ","):
            with self.subTest(value=value):
                with self.assertRaises(usage.UsageError):
                    Options().parseOptions([*BASE, "--expose", value])
