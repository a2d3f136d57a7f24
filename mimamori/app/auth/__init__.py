"""Accounts and sessions: ``deps`` (``current_person`` / ``CurrentPerson``, the signed-in person of a
request), ``service``, ``views``, ``csrf``, ``proxy``.
"""
