"""Certificates: the checks both path validators share, paths to pinned anchors and to trust
points, CRLs and their downloads, the CA trust pool, expiry notifications, certificates the
device makes itself and SCEP enrolment."""
