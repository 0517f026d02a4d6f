"""What the device keeps secret: the key store and type 6 secrets."""
