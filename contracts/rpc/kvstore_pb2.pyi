from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PutState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUT_STATE_UNSPECIFIED: _ClassVar[PutState]
    PUT_STATE_STARTED: _ClassVar[PutState]
    PUT_STATE_ALREADY_EXISTS: _ClassVar[PutState]
    PUT_STATE_IN_FLIGHT: _ClassVar[PutState]
    PUT_STATE_FAILED: _ClassVar[PutState]
PUT_STATE_UNSPECIFIED: PutState
PUT_STATE_STARTED: PutState
PUT_STATE_ALREADY_EXISTS: PutState
PUT_STATE_IN_FLIGHT: PutState
PUT_STATE_FAILED: PutState

class RegisterNodeRequest(_message.Message):
    __slots__ = ("address", "capacity", "hostname", "boot_id", "shm_name", "data_address")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SHM_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    capacity: int
    hostname: str
    boot_id: str
    shm_name: str
    data_address: str
    def __init__(self, address: _Optional[str] = ..., capacity: _Optional[int] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., shm_name: _Optional[str] = ..., data_address: _Optional[str] = ...) -> None: ...

class RegisterNodeReply(_message.Message):
    __slots__ = ("node_id", "heartbeat_interval_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    heartbeat_interval_s: float
    def __init__(self, node_id: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("node_id", "address", "offset", "hostname", "boot_id", "shm_name", "data_address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    SHM_NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    offset: int
    hostname: str
    boot_id: str
    shm_name: str
    data_address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., offset: _Optional[int] = ..., hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., shm_name: _Optional[str] = ..., data_address: _Optional[str] = ...) -> None: ...

class PutStartItem(_message.Message):
    __slots__ = ("key", "size", "checksum", "replicas")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    checksum: int
    replicas: int
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., checksum: _Optional[int] = ..., replicas: _Optional[int] = ...) -> None: ...

class PutStartRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[PutStartItem]
    def __init__(self, items: _Optional[_Iterable[_Union[PutStartItem, _Mapping]]] = ...) -> None: ...

class PutStartResult(_message.Message):
    __slots__ = ("key", "state", "put_id", "replicas", "code", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PUT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    state: PutState
    put_id: str
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    code: int
    message: str
    def __init__(self, key: _Optional[str] = ..., state: _Optional[_Union[PutState, str]] = ..., put_id: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PutStartReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PutStartResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PutStartResult, _Mapping]]] = ...) -> None: ...

class PutCommitRequest(_message.Message):
    __slots__ = ("put_ids", "checksums")
    PUT_IDS_FIELD_NUMBER: _ClassVar[int]
    CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    put_ids: _containers.RepeatedScalarFieldContainer[str]
    checksums: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, put_ids: _Optional[_Iterable[str]] = ..., checksums: _Optional[_Iterable[int]] = ...) -> None: ...

class PutAbortRequest(_message.Message):
    __slots__ = ("put_ids",)
    PUT_IDS_FIELD_NUMBER: _ClassVar[int]
    put_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, put_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class KeyResult(_message.Message):
    __slots__ = ("key", "ok", "code", "message")
    KEY_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    key: str
    ok: bool
    code: int
    message: str
    def __init__(self, key: _Optional[str] = ..., ok: _Optional[bool] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class KeyResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[KeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[KeyResult, _Mapping]]] = ...) -> None: ...

class KeysRequest(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectLocation(_message.Message):
    __slots__ = ("key", "found", "size", "checksum", "replicas", "lease_ttl_s")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    key: str
    found: bool
    size: int
    checksum: int
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    lease_ttl_s: float
    def __init__(self, key: _Optional[str] = ..., found: _Optional[bool] = ..., size: _Optional[int] = ..., checksum: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., lease_ttl_s: _Optional[float] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("objects",)
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectLocation]
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectLocation, _Mapping]]] = ...) -> None: ...

class ExistsReply(_message.Message):
    __slots__ = ("exists",)
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    exists: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, exists: _Optional[_Iterable[bool]] = ...) -> None: ...

class WaitCommittedRequest(_message.Message):
    __slots__ = ("keys", "timeout_s")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    timeout_s: float
    def __init__(self, keys: _Optional[_Iterable[str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("node_id", "address", "capacity", "used")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    capacity: int
    used: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., capacity: _Optional[int] = ..., used: _Optional[int] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("nodes", "objects", "pending_puts", "evictions")
    NODES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    PENDING_PUTS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStats]
    objects: int
    pending_puts: int
    evictions: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStats, _Mapping]]] = ..., objects: _Optional[int] = ..., pending_puts: _Optional[int] = ..., evictions: _Optional[int] = ...) -> None: ...

class WriteChunk(_message.Message):
    __slots__ = ("offset", "size", "checksum", "data", "chunk_checksum")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    offset: int
    size: int
    checksum: int
    data: bytes
    chunk_checksum: int
    def __init__(self, offset: _Optional[int] = ..., size: _Optional[int] = ..., checksum: _Optional[int] = ..., data: _Optional[bytes] = ..., chunk_checksum: _Optional[int] = ...) -> None: ...

class WriteReply(_message.Message):
    __slots__ = ("bytes_written",)
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    def __init__(self, bytes_written: _Optional[int] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("offset", "size", "chunk_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    size: int
    chunk_size: int
    def __init__(self, offset: _Optional[int] = ..., size: _Optional[int] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ReadChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class WriteItem(_message.Message):
    __slots__ = ("offset", "checksum", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    checksum: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., checksum: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class BatchWriteRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WriteItem]
    def __init__(self, items: _Optional[_Iterable[_Union[WriteItem, _Mapping]]] = ...) -> None: ...

class BatchReadRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReadRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[ReadRequest, _Mapping]]] = ...) -> None: ...

class BatchReadReply(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, data: _Optional[_Iterable[bytes]] = ...) -> None: ...

class SealItem(_message.Message):
    __slots__ = ("offset", "size", "checksum")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    offset: int
    size: int
    checksum: int
    def __init__(self, offset: _Optional[int] = ..., size: _Optional[int] = ..., checksum: _Optional[int] = ...) -> None: ...

class SealRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SealItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SealItem, _Mapping]]] = ...) -> None: ...

class ItemResults(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[KeyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[KeyResult, _Mapping]]] = ...) -> None: ...
