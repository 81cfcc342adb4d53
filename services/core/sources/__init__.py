"""Source settings by kind: ``common`` (what every source shares: mapping, webhook
auth, API and poll settings), one module per CRM, and ``kinds``, their tagged union.
Kept together in core because the config validates every source in every service;
each CRM's connector, in ``services/ingest/connectors/``, imports its module alone."""
