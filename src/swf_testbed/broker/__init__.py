"""The embedded STOMP broker (``swf-testbed broker``): the default broker for one machine.

docs/broker.md says what it does and the choices it makes;
:mod:`swf_testbed.broker.server` lists its modules.
"""

from swf_testbed.broker.frames import Frame, FrameError, FrameParser, Limits, encode_frame
from swf_testbed.broker.server import Broker, run

__all__ = ["Broker", "Frame", "FrameError", "FrameParser", "Limits", "encode_frame", "run"]
