"""Whole-deployment backups: the format, and taking and restoring them."""
