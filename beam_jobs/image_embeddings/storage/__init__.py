"""Beam-side storage: FileSystems on local and gs:// paths, bounded GCS requests, the lease."""
