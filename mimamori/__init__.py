"""mimamori shared kernel: wire protocol, settings, clock, database, embedded services, CLI.

The kernel imports no stage package; stages meet on the wire or in the database.
"""

__version__ = "0.1.0"
