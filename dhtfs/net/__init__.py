"""The network: authenticated connections and the messages they carry.

Holds wire (frames: HELLO/REQUEST/RESPONSE/ERROR, msgpack bodies), rpc (every request's name,
argument and answer schema, strictly validated), tls (TLS 1.3 over trio streams), transport
(persistent mutually authenticated connections, the pool, fault injection), network (the seam:
``Contact``, ``Message``, the ``Network`` interface the simulator implements too), addresses
(bound vs advertised) and control (the local control socket the CLI speaks).

May import: ``dhtfs.base``, ``dhtfs.trust``.
"""
