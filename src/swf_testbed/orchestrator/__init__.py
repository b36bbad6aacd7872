"""The orchestrator: one testbed.toml, the testbed's own supervisord, and ``swf-testbed run``.

* :mod:`~swf_testbed.orchestrator.config`: the testbed.toml schema and loader;
* :mod:`~swf_testbed.orchestrator.supervisor`: the generated supervisord config and its XML-RPC client;
* :mod:`~swf_testbed.orchestrator.health`: liveness from heartbeats, executions heard on the broker;
* :mod:`~swf_testbed.orchestrator.watch`: the per-namespace program that records them to a file;
* :mod:`~swf_testbed.orchestrator.run`: bring up, wait for health, follow a workflow execution.

The commands are in :mod:`swf_testbed.cli.orchestrator`. Nothing runs at import time.
"""
