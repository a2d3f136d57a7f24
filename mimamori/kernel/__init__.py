"""The shared kernel: clock, configuration, database and broker access, the wire protocol and the
database contract. It imports no stage; the stages and the composition root (``mimamori.cli``,
``mimamori.demo``, ``mimamori.runtime``) import it."""
