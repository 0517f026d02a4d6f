"""Device ownership: vouchers, the owner certificate, key packages and consent tokens."""
