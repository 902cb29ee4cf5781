"""The delivery engine: ``Engine`` and its parts."""
