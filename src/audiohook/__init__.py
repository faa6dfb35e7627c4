"""Genesys AudioHook v2 server for AWS.

The sans-I/O core lives at the top of the package (``protocol``, ``session``, ``media``,
``sequencing``, ``auth``, ``records``, ``config``) and imports nothing of the subpackages: ``aws``
(adapters and the Lambda front, the Lambda layer), ``relay`` (the production audio front),
``local`` (API Gateway emulator and embedded AWS) and ``tools`` (client, conformance, CLI).
"""

PROTOCOL_VERSION = "2"
