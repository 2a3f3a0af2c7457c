"""The ``voxbus`` command."""
