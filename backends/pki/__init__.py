"""PKI: keys, trustpoints, enrollment, the trust pool and expiry alerts."""
