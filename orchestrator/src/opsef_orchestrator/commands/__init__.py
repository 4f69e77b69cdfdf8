"""Sub-commands of ``opsef-orchestrate``, one module per area, loaded lazily by :mod:`opsef_orchestrator.cli`."""
