"""The shared engine: plain Python over cryptography and asn1crypto, no XML, YANG or NETCONF.
Here, what several domains share (the error base, strict JSON text, CMS, bounded
decompression); in the subpackages, one domain each: x509, keys, onboarding, software."""
