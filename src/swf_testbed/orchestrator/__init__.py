"""The orchestrator: one testbed.toml, the testbed's own supervisord, and ``swf-testbed run``.

* :mod:`~swf_testbed.orchestrator.config`: the testbed.toml schema and loader;
* :mod:`~swf_testbed.orchestrator.supervisor`: the generated supervisord config, its XML-RPC
  client;
* :mod:`~swf_testbed.orchestrator.health`: heartbeats and executions heard on the broker;
* :mod:`~swf_testbed.orchestrator.checks`: the health check (own programs, agents elsewhere);
* :mod:`~swf_testbed.orchestrator.monitor_api`: what it asks the monitor's REST API;
* :mod:`~swf_testbed.orchestrator.watch`: the per-namespace program that records them to a file;
* :mod:`~swf_testbed.orchestrator.listener`: the orchestrator's broker connection;
* :mod:`~swf_testbed.orchestrator.run`: bring up, wait for health, stop, restart;
* :mod:`~swf_testbed.orchestrator.session`, :mod:`~swf_testbed.orchestrator.follow`: follow one
  workflow execution to its end.

The commands are in :mod:`swf_testbed.cli.orchestrator`. Nothing runs at import time.
"""
