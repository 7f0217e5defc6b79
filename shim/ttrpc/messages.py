"""The ttrpc envelope messages, built from a descriptor assembled in code.

No generated module is needed: the guest ships this package with only protobuf installed. The
messages live in a private descriptor pool so they never clash with a generated
google/rpc/status.proto loaded elsewhere in the same process.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _add_field(message: descriptor_pb2.DescriptorProto, name: str, number: int, field_type: int,
               repeated: bool = False, type_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=field_type,
                              label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name


def _status_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="google/rpc/status.proto", package="google.rpc", syntax="proto3",
        dependency=[any_pb2.DESCRIPTOR.name])
    status = file.message_type.add(name="Status")
    _add_field(status, "code", 1, _F.TYPE_INT32)
    _add_field(status, "message", 2, _F.TYPE_STRING)
    _add_field(status, "details", 3, _F.TYPE_MESSAGE, repeated=True, type_name=".google.protobuf.Any")
    return file


def _ttrpc_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name="ttrpc/ttrpc.proto", package="ttrpc", syntax="proto3",
        dependency=["google/rpc/status.proto"])
    key_value = file.message_type.add(name="KeyValue")
    _add_field(key_value, "key", 1, _F.TYPE_STRING)
    _add_field(key_value, "value", 2, _F.TYPE_STRING)
    request = file.message_type.add(name="Request")
    _add_field(request, "service", 1, _F.TYPE_STRING)
    _add_field(request, "method", 2, _F.TYPE_STRING)
    _add_field(request, "payload", 3, _F.TYPE_BYTES)
    _add_field(request, "timeout_nano", 4, _F.TYPE_INT64)
    _add_field(request, "metadata", 5, _F.TYPE_MESSAGE, repeated=True, type_name=".ttrpc.KeyValue")
    response = file.message_type.add(name="Response")
    _add_field(response, "status", 1, _F.TYPE_MESSAGE, type_name=".google.rpc.Status")
    _add_field(response, "payload", 2, _F.TYPE_BYTES)
    return file


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
_pool.AddSerializedFile(_status_file().SerializeToString())
_pool.AddSerializedFile(_ttrpc_file().SerializeToString())

KeyValue = message_factory.GetMessageClass(_pool.FindMessageTypeByName("ttrpc.KeyValue"))
Request = message_factory.GetMessageClass(_pool.FindMessageTypeByName("ttrpc.Request"))
Response = message_factory.GetMessageClass(_pool.FindMessageTypeByName("ttrpc.Response"))
Status = message_factory.GetMessageClass(_pool.FindMessageTypeByName("google.rpc.Status"))
