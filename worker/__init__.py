"""Kafka to PostgreSQL ingestion worker."""

__version__ = "0.1.0"
