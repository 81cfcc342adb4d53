"""Fake CRM servers that follow each vendor's public API documentation.

They are the only fakes in crmsync: the broker and the stores are always real. Each
fake serves its vendor's payload shapes, signatures, paging and rate limits, and can
inject the failures real CRMs show (429 with Retry-After, random 5xx, slow pages).
They drive the connector tests, the demo and the benchmarks.
"""
