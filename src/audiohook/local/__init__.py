"""The local stack: an API Gateway WebSocket emulator and an embedded AWS (moto), so the
product runs on one machine with no AWS account."""
