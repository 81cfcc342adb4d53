"""crmsync services: ingest, mapper, writer and what they share."""
