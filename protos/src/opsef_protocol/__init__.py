"""OpSeF protocol package.

Installed into every model service's environment and into the orchestrator:
the generated gRPC code (:mod:`opsef_protocol.v1`), the numpy<->tensor codec
(:mod:`opsef_protocol.codec`), model manifests (:mod:`opsef_protocol.manifest`),
the adapter interface (:mod:`opsef_protocol.adapter`) and the one server runner
all services share (:mod:`opsef_protocol.server`).
"""
from opsef_protocol.v1 import PROTOCOL_VERSION, SERVICE_NAME

__version__ = "0.1.0"
__all__ = ["PROTOCOL_VERSION", "SERVICE_NAME", "__version__"]
