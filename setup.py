"""Packaging for txass.

The twistd plugin lives in the namespace package ``twisted.plugins``.  It is
listed as a single module, so no ``twisted/plugins/__init__.py`` is ever
installed: such a file would hide every other distribution's plugins.
"""

from setuptools import setup

setup(
    name="txass",
    version="0.1.0.dev0",
    description="Asynchronous Service Stages for Twisted on RabbitMQ",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=["txass"],
    py_modules=["twisted.plugins.txass_plugin"],
    package_data={"txass": ["py.typed"]},
    # The lower bounds are the oldest releases the whole test suite passed
    # with, on Python 3.11.  The newest it passed with were Twisted 26.10.0
    # and pika 1.4.4.
    install_requires=[
        "Twisted>=24.7.0",
        "pika>=1.3.2",
        "pyOpenSSL>=24.0.0",
        "service_identity>=24.1.0",
        # Used directly to read certificates and keys for TLS; pyOpenSSL
        # needs it too.
        "cryptography>=41.0.5",
    ],
    entry_points={
        "console_scripts": ["txass = txass._cli:main"],
    },
    extras_require={
        "dev": ["mypy>=1.10"],
        # The optional MessagePack codec, which services accept only when
        # they name it.
        "msgpack": ["msgpack>=1.0"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: System :: Distributed Computing",
    ],
)
