"""Ingest: receives CRM changes (webhooks, polls, full syncs) and writes ContactChange events."""
