"""The browser page (``voxbus web``): static files bundled at setup, served with LiveKit tokens."""
