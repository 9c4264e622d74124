"""Shim so that `pip install -e .` works with setup.cfg-only metadata."""

import setuptools

setuptools.setup()
