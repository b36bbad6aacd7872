"""A stand-in for the existing ePIC testbed's agents (BaseAgent library, release line v28).

Written from the wire contract (``epic-v28-wire.md``) alone, and on purpose
independent of swf-testbed: it imports nothing from ``swf_testbed``. It talks
STOMP 1.1 with stomp.py directly and REST with plain httpx, and sends exactly
the bodies, headers and REST payloads those agents send: no ``msg_id``, naive
local timestamps, ``run_id`` as a string, ``simulation_tick``, slices with
their fields under ``content``, anonymous log posts, ``substate: null`` in
system-state events.

``python -m tests.compat.legacy_agents --stfs 10`` runs one fast-processing
run (workflow runner with its DAQ sequence, data agent, fastmon, fast
processing) and writes a JSON report of every REST call and every message it
made; its last line of output is a JSON summary.

Where the contract is silent the fixture takes the simplest choice and says
so here:

* all agents run in one process, one thread (and one STOMP connection) each;
  fastmon takes the STF's ``file_id`` from the data agent's registration in
  that process (v28's own lookup is not in the wire document);
* the one addition to the dialect: a ``receipt`` on each SUBSCRIBE, awaited
  before the run starts, so that no agent misses the start of the run (v28
  agents are long-running and subscribed long before a run);
* sampling is deterministic (STF ``k`` is sampled when ``floor(k·rate)``
  grows), so the counts are known in advance.
"""
