"""In-memory network and virtual time that run the real node code at scale."""
