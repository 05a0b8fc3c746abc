"""Simulated cash registers (KKM) that speak the real frames to the gateway.

`receipts` builds valid requests for either protocol version without any I/O; `kkm` is one device
on the wire, keeping its token and request number the way firmware must.
"""
