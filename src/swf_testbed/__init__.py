"""swf-testbed: the streaming workflow testbed for the ePIC experiment."""

__version__ = "0.1.0"
