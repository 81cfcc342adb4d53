"""One module per CRM: how it pushes (webhooks) and how it is pulled (REST APIs)."""
