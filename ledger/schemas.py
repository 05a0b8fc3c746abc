"""The generated message modules of each served protocol version, keyed by the header's version.

2.0.3 and 2.0.4 share message names for everything the gateway touches, so code that builds or
reads messages takes the module for the frame's version and stays version-agnostic.
"""

from types import ModuleType

from ofdproto.kkm.v203 import kkm_pb2 as v203
from ofdproto.kkm.v204 import kkm_pb2 as v204

SCHEMAS: dict[int, ModuleType] = {203: v203, 204: v204}
