"""gateway: the home's (or area's) edge between local devices and the service.

- ``gateway.adapters``: pure normalisation of local-link messages (native mimamori, Zigbee2MQTT,
  Tasmota, Shelly Gen2) into ``Reading``s: ``normalise(topic, payload, now_ms=, memory=)``.
- ``gateway.outbox``: ``Outbox``, the durable SQLite (WAL) outbox with seq assignment, PUBACK-driven
  deletion from the pending set, a replay window for ``resend`` commands and a bounded size.
- ``gateway.service``: ``Gateway`` (the MQTT QoS 1 uplink, one thread per gateway) and
  ``run_gateway`` (the body of ``mimamori gateway``).
- ``gateway.metrics``: Prometheus metrics read from the live gateways at scrape time; readiness.
- ``gateway.provision``: broker accounts (``mimamori gateway provision``): Mosquitto password file
  and ACL, 0600 env files, a CA and server certificate for TLS.

The stage imports only the kernel (``mimamori``); it meets ingest on the wire.
"""
