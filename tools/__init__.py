"""Build and development tooling: run from a source checkout, never shipped in the
runtime package (``services``)."""
