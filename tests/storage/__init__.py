"""The spool's storage: the protocol every backend honours, and the SQLite backend."""
