"""Software install: IOS XR install actions, RPM fingerprints and known-good values."""
