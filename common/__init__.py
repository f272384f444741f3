"""What every stage shares and nothing else: atomic I/O and provenance, the typed config loader, the CLI wrapper."""
