from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT64: _ClassVar[DType]

class FederationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEDERATION_STATE_UNSPECIFIED: _ClassVar[FederationState]
    WAITING_FOR_CLIENTS: _ClassVar[FederationState]
    TRAINING: _ClassVar[FederationState]
    AGGREGATING: _ClassVar[FederationState]
    FINISHED: _ClassVar[FederationState]
    EVALUATING: _ClassVar[FederationState]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
FLOAT64: DType
INT64: DType
FEDERATION_STATE_UNSPECIFIED: FederationState
WAITING_FOR_CLIENTS: FederationState
TRAINING: FederationState
AGGREGATING: FederationState
FINISHED: FederationState
EVALUATING: FederationState

class TensorHeader(_message.Message):
    __slots__ = ("name", "shape", "dtype", "codec", "payload_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    codec: str
    payload_size: int
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., codec: _Optional[str] = ..., payload_size: _Optional[int] = ...) -> None: ...

class Trailer(_message.Message):
    __slots__ = ("tensor_count", "payload_size", "sha256")
    TENSOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    tensor_count: int
    payload_size: int
    sha256: bytes
    def __init__(self, tensor_count: _Optional[int] = ..., payload_size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("tensor", "data", "trailer")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TRAILER_FIELD_NUMBER: _ClassVar[int]
    tensor: TensorHeader
    data: bytes
    trailer: Trailer
    def __init__(self, tensor: _Optional[_Union[TensorHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., trailer: _Optional[_Union[Trailer, _Mapping]] = ...) -> None: ...

class Capabilities(_message.Message):
    __slots__ = ("cpu_cores", "memory_bytes", "train_samples_per_second", "compute_budget")
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_BUDGET_FIELD_NUMBER: _ClassVar[int]
    cpu_cores: int
    memory_bytes: int
    train_samples_per_second: float
    compute_budget: float
    def __init__(self, cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., train_samples_per_second: _Optional[float] = ..., compute_budget: _Optional[float] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "capabilities", "uplink_codec", "downlink_codec", "instance_id", "edge")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    UPLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    capabilities: Capabilities
    uplink_codec: str
    downlink_codec: str
    instance_id: str
    edge: bool
    def __init__(self, client_id: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., uplink_codec: _Optional[str] = ..., downlink_codec: _Optional[str] = ..., instance_id: _Optional[str] = ..., edge: _Optional[bool] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "config_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    config_json: str
    def __init__(self, name: _Optional[str] = ..., config_json: _Optional[str] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("session_id", "model", "max_chunk_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelSpec
    max_chunk_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., max_chunk_bytes: _Optional[int] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("session_id", "wait_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    wait_ms: int
    def __init__(self, session_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "optimizer", "momentum")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ...) -> None: ...

class TrainTask(_message.Message):
    __slots__ = ("round", "task_id", "method", "method_config_json", "hyperparameters", "uplink_codec", "downlink_codec", "model_payload_size", "error_feedback", "trainer", "edge")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METHOD_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    UPLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    TRAINER_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    round: int
    task_id: str
    method: str
    method_config_json: str
    hyperparameters: Hyperparameters
    uplink_codec: str
    downlink_codec: str
    model_payload_size: int
    error_feedback: bool
    trainer: str
    edge: EdgeRound
    def __init__(self, round: _Optional[int] = ..., task_id: _Optional[str] = ..., method: _Optional[str] = ..., method_config_json: _Optional[str] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., uplink_codec: _Optional[str] = ..., downlink_codec: _Optional[str] = ..., model_payload_size: _Optional[int] = ..., error_feedback: _Optional[bool] = ..., trainer: _Optional[str] = ..., edge: _Optional[_Union[EdgeRound, _Mapping]] = ...) -> None: ...

class EdgeRound(_message.Message):
    __slots__ = ("deadline_seconds", "quorum", "fraction", "sends_delta", "max_update_norm", "norm_action", "max_examples")
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    SENDS_DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_UPDATE_NORM_FIELD_NUMBER: _ClassVar[int]
    NORM_ACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    deadline_seconds: float
    quorum: float
    fraction: float
    sends_delta: bool
    max_update_norm: float
    norm_action: str
    max_examples: int
    def __init__(self, deadline_seconds: _Optional[float] = ..., quorum: _Optional[float] = ..., fraction: _Optional[float] = ..., sends_delta: _Optional[bool] = ..., max_update_norm: _Optional[float] = ..., norm_action: _Optional[str] = ..., max_examples: _Optional[int] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("round", "task_id", "downlink_codec", "model_payload_size")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DOWNLINK_CODEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_PAYLOAD_SIZE_FIELD_NUMBER: _ClassVar[int]
    round: int
    task_id: str
    downlink_codec: str
    model_payload_size: int
    def __init__(self, round: _Optional[int] = ..., task_id: _Optional[str] = ..., downlink_codec: _Optional[str] = ..., model_payload_size: _Optional[int] = ...) -> None: ...

class Wait(_message.Message):
    __slots__ = ("retry_after_ms", "reason")
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    retry_after_ms: int
    reason: str
    def __init__(self, retry_after_ms: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Finished(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("train", "wait", "finished", "evaluate")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    train: TrainTask
    wait: Wait
    finished: Finished
    evaluate: EvaluateTask
    def __init__(self, train: _Optional[_Union[TrainTask, _Mapping]] = ..., wait: _Optional[_Union[Wait, _Mapping]] = ..., finished: _Optional[_Union[Finished, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("session_id", "task_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("session_id", "task_id", "round", "num_examples", "metrics", "partial")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    round: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    partial: PartialSum
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., partial: _Optional[_Union[PartialSum, _Mapping]] = ...) -> None: ...

class PartialSum(_message.Message):
    __slots__ = ("count", "bound", "fraction_bits", "selected", "failed", "bytes_up", "bytes_down", "dense_bytes_down")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    FRACTION_BITS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    count: int
    bound: float
    fraction_bits: int
    selected: int
    failed: int
    bytes_up: int
    bytes_down: int
    dense_bytes_down: int
    def __init__(self, count: _Optional[int] = ..., bound: _Optional[float] = ..., fraction_bits: _Optional[int] = ..., selected: _Optional[int] = ..., failed: _Optional[int] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., dense_bytes_down: _Optional[int] = ...) -> None: ...

class UpdateMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class SubmitReply(_message.Message):
    __slots__ = ("round", "payload_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    payload_bytes: int
    def __init__(self, round: _Optional[int] = ..., payload_bytes: _Optional[int] = ...) -> None: ...

class FailureReport(_message.Message):
    __slots__ = ("session_id", "task_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class FailureReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("session_id", "task_id", "round", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    round: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("session_id", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("include_history",)
    INCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    include_history: bool
    def __init__(self, include_history: _Optional[bool] = ...) -> None: ...

class ClientStatus(_message.Message):
    __slots__ = ("client_id", "capabilities", "seconds_since_seen", "updates_committed", "edge")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SECONDS_SINCE_SEEN_FIELD_NUMBER: _ClassVar[int]
    UPDATES_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    EDGE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    capabilities: Capabilities
    seconds_since_seen: float
    updates_committed: int
    edge: bool
    def __init__(self, client_id: _Optional[str] = ..., capabilities: _Optional[_Union[Capabilities, _Mapping]] = ..., seconds_since_seen: _Optional[float] = ..., updates_committed: _Optional[int] = ..., edge: _Optional[bool] = ...) -> None: ...

class RoundMetrics(_message.Message):
    __slots__ = ("round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "selected", "updates", "dense_bytes_up", "dense_bytes_down", "metrics", "evaluated", "failed", "edges", "edge_bytes_up", "edge_bytes_down")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    EDGE_BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    EDGE_BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    round: int
    accuracy: float
    loss: float
    bytes_up: int
    bytes_down: int
    seconds: float
    selected: int
    updates: int
    dense_bytes_up: int
    dense_bytes_down: int
    metrics: _containers.ScalarMap[str, float]
    evaluated: int
    failed: int
    edges: int
    edge_bytes_up: int
    edge_bytes_down: int
    def __init__(self, round: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., seconds: _Optional[float] = ..., selected: _Optional[int] = ..., updates: _Optional[int] = ..., dense_bytes_up: _Optional[int] = ..., dense_bytes_down: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., evaluated: _Optional[int] = ..., failed: _Optional[int] = ..., edges: _Optional[int] = ..., edge_bytes_up: _Optional[int] = ..., edge_bytes_down: _Optional[int] = ...) -> None: ...

class FederationStatus(_message.Message):
    __slots__ = ("state", "round", "total_rounds", "method", "connected_clients", "clients", "bytes_up", "bytes_down", "last_round", "history")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    state: FederationState
    round: int
    total_rounds: int
    method: str
    connected_clients: int
    clients: _containers.RepeatedCompositeFieldContainer[ClientStatus]
    bytes_up: int
    bytes_down: int
    last_round: RoundMetrics
    history: _containers.RepeatedCompositeFieldContainer[RoundMetrics]
    def __init__(self, state: _Optional[_Union[FederationState, str]] = ..., round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., method: _Optional[str] = ..., connected_clients: _Optional[int] = ..., clients: _Optional[_Iterable[_Union[ClientStatus, _Mapping]]] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., last_round: _Optional[_Union[RoundMetrics, _Mapping]] = ..., history: _Optional[_Iterable[_Union[RoundMetrics, _Mapping]]] = ...) -> None: ...
