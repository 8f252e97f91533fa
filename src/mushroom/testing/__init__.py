"""Test doubles shared by the tests and the benchmarks.

Installed with the library so that both import them the same way, e.g.
``from mushroom.testing.inat_server import FakeINaturalist``. Nothing else in ``mushroom``
imports this package, and importing it loads only the standard library (each module adds
only what it needs: :mod:`mushroom.testing.inat_server` adds Pillow).
"""
