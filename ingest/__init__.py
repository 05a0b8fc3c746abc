"""The edge: frame codec, TCP server, request pipeline, control API and CLI."""

import os

# gRPC's C core logs on its own (plain text on stderr: fork handlers, bind failures) unless told
# not to before grpc is first imported, which is after this: every log line of `ofd` stays JSON,
# and what failed reaches the person as the error it raised. GRPC_VERBOSITY=debug brings it back.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
