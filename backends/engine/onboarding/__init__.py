"""Who the device is and who owns it: lab CAs and IDevIDs, serial numbers, vouchers,
owner certificates and voucher bundles, consent tokens, key packages."""
