"""Lambda entry point of the $connect route."""

from audiohook.wiring import lambda_handler

handler = lambda_handler("connect")
