"""Helpers shared by the test files: waiting, a seeded app world, an SMTP sink, a home's local broker.

The fixtures built on them (``world``, ``smtp``) are in ``tests/conftest.py``; test files import only
plain helpers from here.
"""
