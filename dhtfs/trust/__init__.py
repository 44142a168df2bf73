"""Trust: who belongs to the swarm.

Holds pki (the swarm CA, node certificates, node ID = SHA-256 of the key), identity (a node's
configured or private-swarm identity) and revocation (the CA's CRL and the revocation list a
node enforces).

May import: ``dhtfs.base``.
"""
