"""Genesys AudioHook v2 server for AWS: sans-I/O protocol core plus thin AWS adapters."""

PROTOCOL_VERSION = "2"
