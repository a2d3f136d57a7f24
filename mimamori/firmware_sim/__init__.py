"""Simulated homes: resident behaviour -> device firmware -> events (plus injected incidents).

- ``firmware_sim.offline.simulate_offline``: the fleet's event streams as numpy arrays (fast; for
  the detector's evaluation).
- ``firmware_sim.fleet.run_fleet``: the same streams through real gateways to an MQTT broker.

Evaluation and benchmarks use it; production code never imports it.
"""
