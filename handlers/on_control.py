"""Lambda entry point of the Control function (pause, resume, event, disconnect, reconnect)."""

from audiohook.aws.control import control_handler

handler = control_handler()
