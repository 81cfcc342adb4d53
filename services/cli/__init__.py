"""The crmsync command line."""
