"""The control API over gRPC: `methods` (the table both sides use), `service` (the server:
authentication, scope, then the registry), `convert` (messages to and from the registry's
records) and `client` (the blocking client)."""
