"""Lambda entry point of the $connect route."""

from audiohook.aws.wiring import lambda_handler

handler = lambda_handler("connect")
