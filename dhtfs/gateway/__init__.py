"""The HTTP face: a read-only gateway on a mount (``-o http=HOST:PORT``) serving the swarm's
tree over HTTP/1.1 with ranges, validators and streaming.

Holds server (a small trio server driving ``h11`` per connection, with deadlines and bounded
buffers), routes (a request → a response: files, directories, ``/.blocks/<id>``, errors),
content (a file version read chunk by chunk through the mount's read path), paths
(percent-decoding and resolution that never leaves the tree), ranges (``Range`` and
``multipart/byteranges``), validators (``ETag``, ``Last-Modified`` and the conditional
headers), listing (HTML and JSON directory listings), access (TLS and client
authentication: a bearer token or client certificates of the swarm CA) and stats (the
counters ``dhtfs status`` shows).

May import: ``dhtfs.base``, ``dhtfs.store``, ``dhtfs.meta``, ``dhtfs.fs``.
"""
