"""Ingest stage: MQTT shared-subscription consumer → validate → dedup → batch COPY → commit → ack.

Entry point: ``run_ingest(settings, database_url=..., mqtt_url=...)``; see ``mimamori/ingest/README.md``.
"""

from .consumer import IngestService, IngestStats, default_client_id, run_ingest
from .store import pair_device

__all__ = ["IngestService", "IngestStats", "default_client_id", "pair_device", "run_ingest"]
