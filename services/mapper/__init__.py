"""Mapper: turns each source's ContactChanges into ProfileUpdates by its rules."""
