"""Generated code of ``opsef.segmenter.v1`` (do not edit; run ``protos/generate.py``)."""
from opsef_protocol.v1 import segmenter_pb2, segmenter_pb2_grpc

#: Fully qualified gRPC service name, also the health-check service name.
SERVICE_NAME = segmenter_pb2.DESCRIPTOR.services_by_name["Segmenter"].full_name
#: Protocol version reported by GetServiceInfo.
PROTOCOL_VERSION = "1.0"

__all__ = ["segmenter_pb2", "segmenter_pb2_grpc", "SERVICE_NAME", "PROTOCOL_VERSION"]
