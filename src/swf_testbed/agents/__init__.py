"""Agents: the runtime every agent subclasses, and the testbed's agents."""

from swf_testbed.agents.handlers import HandlerError, handles
from swf_testbed.agents.runtime import Agent, Listen

__all__ = ["Agent", "HandlerError", "Listen", "handles"]
