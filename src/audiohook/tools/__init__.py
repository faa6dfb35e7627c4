"""Tools around the server: the Genesys-like client, the conformance checker, WAV helpers,
session export from the stream, and the ``audiohook`` command line."""
