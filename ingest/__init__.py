"""The edge: frame codec, TCP server, request pipeline, control API and CLI."""
