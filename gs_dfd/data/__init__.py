"""Scene format, image I/O and scene synthesis entry points."""
