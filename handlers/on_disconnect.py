"""Lambda entry point of the $disconnect route."""

from audiohook.wiring import lambda_handler

handler = lambda_handler("disconnect")
