"""Agents: the runtime every agent subclasses, and the testbed's agents."""

from swf_testbed.agents.runtime import Agent, Listen, handles

__all__ = ["Agent", "Listen", "handles"]
