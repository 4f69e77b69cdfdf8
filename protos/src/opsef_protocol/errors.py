"""Errors a model adapter raises; the server maps each to one gRPC status code."""
from __future__ import annotations

import grpc

__all__ = [
    "ServiceError",
    "InvalidArgument",
    "ModelNotFound",
    "WeightsUnavailable",
    "ResourceExhausted",
    "OutOfMemory",
]


class ServiceError(Exception):
    """Base class: an error with a gRPC status code and a message for the user."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError, ValueError):
    """Bad shape, dtype, axes or parameter; the message names it."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServiceError, LookupError):
    """Unknown model name; the message lists the known ones."""

    code = grpc.StatusCode.NOT_FOUND


class WeightsUnavailable(ServiceError):
    """Weights missing or corrupt (sha256 mismatch); the message says how to get them."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    """The service is busy (all prediction slots and the queue are full)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "busy"


class OutOfMemory(ResourceExhausted):
    """The device ran out of memory; retry with smaller tiles or on another device."""

    reason = "out_of_memory"
