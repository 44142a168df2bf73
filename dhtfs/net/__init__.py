"""The network: authenticated connections and the messages they carry.

Holds wire (frames: HELLO/REQUEST/RESPONSE/ERROR, msgpack bodies), rpc (every request's name,
argument and answer schema, strictly validated), tls (TLS 1.3 over trio streams), transport
(persistent mutually authenticated connections) made of connection (one connection's framing
and request multiplexing), handshake (TLS, certificate checks, HELLO), pool (one connection
per peer, shared dials, idle closing) and faults (test switches), network (the seam:
``Contact``, ``Message``, the ``Network`` interface the simulator implements too), addresses
(bound vs advertised) and control (the local control socket the CLI speaks).

May import: ``dhtfs.base``, ``dhtfs.trust``.
"""
