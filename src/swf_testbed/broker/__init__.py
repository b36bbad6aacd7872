"""The embedded STOMP broker (``swf-testbed broker``): the default broker for one machine.

See :mod:`swf_testbed.broker.server` for what it does and the choices it
makes, and :mod:`swf_testbed.broker.frames` for the wire format.
"""

from swf_testbed.broker.frames import Frame, FrameError, FrameParser, Limits, encode_frame
from swf_testbed.broker.server import Broker, run

__all__ = ["Broker", "Frame", "FrameError", "FrameParser", "Limits", "encode_frame", "run"]
