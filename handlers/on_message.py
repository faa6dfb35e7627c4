"""Lambda entry point of the $default route."""

from audiohook.aws.wiring import lambda_handler

handler = lambda_handler("message")
