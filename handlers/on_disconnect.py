"""Lambda entry point of the $disconnect route."""

from audiohook.aws.wiring import lambda_handler

handler = lambda_handler("disconnect")
