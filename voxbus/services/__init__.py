"""Voxbus services."""
