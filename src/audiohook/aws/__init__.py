"""AWS adapters and the Lambda front: the DynamoDB store, the Kinesis writer, the connection
poster, the API key map, the service that maps the three WebSocket routes onto them, and the
Lambda wiring. This package and the core above it are what the Lambda layer ships."""
