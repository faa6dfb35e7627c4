"""The relay: the binary-capable production front (a container that terminates the WebSocket
itself and runs the service in-process). Run it with ``python -m audiohook.relay``."""
