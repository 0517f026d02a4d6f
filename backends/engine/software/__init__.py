"""Software packages: RPM reading, OpenPGP signatures, fingerprints, and paths that never
follow a link."""
