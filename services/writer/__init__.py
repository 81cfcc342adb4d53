"""Writer: applies ProfileUpdates to the profile store, effectively once."""
