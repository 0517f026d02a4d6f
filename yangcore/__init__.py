"""The protocol-neutral core every transport shares: the schema context, the datastores
and their atomic persistence, the commit pipeline, the NACM rules, the notification bus,
the backend seam and the device filesystem. It imports no transport code."""
