from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    BOOL: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    UINT16: _ClassVar[DType]
    UINT32: _ClassVar[DType]
    UINT64: _ClassVar[DType]
    INT8: _ClassVar[DType]
    INT16: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
BOOL: DType
UINT8: DType
UINT16: DType
UINT32: DType
UINT64: DType
INT8: DType
INT16: DType
INT32: DType
INT64: DType
FLOAT16: DType
FLOAT32: DType
FLOAT64: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "axes", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    axes: str
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., axes: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetServiceInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceInfo(_message.Message):
    __slots__ = ("service_name", "framework", "framework_version", "device", "protocol_version", "service_version", "library_versions", "max_message_bytes", "max_concurrent_predictions", "max_queued_requests", "devices_available", "cpu_threads")
    class LibraryVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_FIELD_NUMBER: _ClassVar[int]
    FRAMEWORK_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIBRARY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CPU_THREADS_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    framework: str
    framework_version: str
    device: str
    protocol_version: str
    service_version: str
    library_versions: _containers.ScalarMap[str, str]
    max_message_bytes: int
    max_concurrent_predictions: int
    max_queued_requests: int
    devices_available: _containers.RepeatedScalarFieldContainer[str]
    cpu_threads: int
    def __init__(self, service_name: _Optional[str] = ..., framework: _Optional[str] = ..., framework_version: _Optional[str] = ..., device: _Optional[str] = ..., protocol_version: _Optional[str] = ..., service_version: _Optional[str] = ..., library_versions: _Optional[_Mapping[str, str]] = ..., max_message_bytes: _Optional[int] = ..., max_concurrent_predictions: _Optional[int] = ..., max_queued_requests: _Optional[int] = ..., devices_available: _Optional[_Iterable[str]] = ..., cpu_threads: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SegmentParameters(_message.Message):
    __slots__ = ("scale", "diameter", "prob_threshold", "nms_threshold", "flow_threshold", "cellprob_threshold", "channels", "normalize", "norm_percentile_low", "norm_percentile_high", "n_tiles", "anisotropy", "do_3d", "stitch_threshold", "min_size", "boundary_weight", "distance_threshold", "foreground_threshold")
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DIAMETER_FIELD_NUMBER: _ClassVar[int]
    PROB_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    NMS_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FLOW_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CELLPROB_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    NORM_PERCENTILE_LOW_FIELD_NUMBER: _ClassVar[int]
    NORM_PERCENTILE_HIGH_FIELD_NUMBER: _ClassVar[int]
    N_TILES_FIELD_NUMBER: _ClassVar[int]
    ANISOTROPY_FIELD_NUMBER: _ClassVar[int]
    DO_3D_FIELD_NUMBER: _ClassVar[int]
    STITCH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    BOUNDARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    FOREGROUND_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    scale: float
    diameter: float
    prob_threshold: float
    nms_threshold: float
    flow_threshold: float
    cellprob_threshold: float
    channels: _containers.RepeatedScalarFieldContainer[int]
    normalize: bool
    norm_percentile_low: float
    norm_percentile_high: float
    n_tiles: _containers.RepeatedScalarFieldContainer[int]
    anisotropy: float
    do_3d: bool
    stitch_threshold: float
    min_size: int
    boundary_weight: float
    distance_threshold: float
    foreground_threshold: float
    def __init__(self, scale: _Optional[float] = ..., diameter: _Optional[float] = ..., prob_threshold: _Optional[float] = ..., nms_threshold: _Optional[float] = ..., flow_threshold: _Optional[float] = ..., cellprob_threshold: _Optional[float] = ..., channels: _Optional[_Iterable[int]] = ..., normalize: bool = ..., norm_percentile_low: _Optional[float] = ..., norm_percentile_high: _Optional[float] = ..., n_tiles: _Optional[_Iterable[int]] = ..., anisotropy: _Optional[float] = ..., do_3d: bool = ..., stitch_threshold: _Optional[float] = ..., min_size: _Optional[int] = ..., boundary_weight: _Optional[float] = ..., distance_threshold: _Optional[float] = ..., foreground_threshold: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "source", "dims", "axes", "channels", "defaults", "weights_present", "description", "weights_location", "weights_sha256", "metrics", "min_size_px")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_PRESENT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_LOCATION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_PX_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    source: str
    dims: _containers.RepeatedScalarFieldContainer[int]
    axes: _containers.RepeatedScalarFieldContainer[str]
    channels: int
    defaults: SegmentParameters
    weights_present: bool
    description: str
    weights_location: str
    weights_sha256: str
    metrics: _containers.ScalarMap[str, float]
    min_size_px: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ..., dims: _Optional[_Iterable[int]] = ..., axes: _Optional[_Iterable[str]] = ..., channels: _Optional[int] = ..., defaults: _Optional[_Union[SegmentParameters, _Mapping]] = ..., weights_present: bool = ..., description: _Optional[str] = ..., weights_location: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., min_size_px: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("model", "image", "parameters", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: Tensor
    parameters: SegmentParameters
    request_id: str
    def __init__(self, model: _Optional[str] = ..., image: _Optional[_Union[Tensor, _Mapping]] = ..., parameters: _Optional[_Union[SegmentParameters, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_s", "predict_s", "encode_s", "queue_s")
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    PREDICT_S_FIELD_NUMBER: _ClassVar[int]
    ENCODE_S_FIELD_NUMBER: _ClassVar[int]
    QUEUE_S_FIELD_NUMBER: _ClassVar[int]
    decode_s: float
    predict_s: float
    encode_s: float
    queue_s: float
    def __init__(self, decode_s: _Optional[float] = ..., predict_s: _Optional[float] = ..., encode_s: _Optional[float] = ..., queue_s: _Optional[float] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("labels", "model", "model_version", "timings", "object_count", "parameters_used", "device")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_USED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    labels: Tensor
    model: str
    model_version: str
    timings: Timings
    object_count: int
    parameters_used: SegmentParameters
    device: str
    def __init__(self, labels: _Optional[_Union[Tensor, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., object_count: _Optional[int] = ..., parameters_used: _Optional[_Union[SegmentParameters, _Mapping]] = ..., device: _Optional[str] = ...) -> None: ...
