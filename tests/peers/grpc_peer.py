#!/usr/bin/env python3
"""A standard gRPC client outside Rust (Python's grpcio), which knows nothing of mailflow's
contracts beforehand: it learns them from the server's reflection service, lists the
services, and calls Queue.GetMessage with message classes built from what it learnt.

Prints `service: <name>` per service, then `queue_id: ...` and `recipient: <address>
<state>` per recipient of the message.
"""
import argparse
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--queue-id", required=True)
    args = p.parse_args()
    channel = grpc.insecure_channel(args.server)
    db = ProtoReflectionDescriptorDatabase(channel)
    for service in db.get_services():
        print(f"service: {service}")
    pool = DescriptorPool(db)
    method = pool.FindServiceByName("mailflow.v1.Queue").methods_by_name["GetMessage"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        "/mailflow.v1.Queue/GetMessage",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    status = call(request_class(queue_id=args.queue_id), timeout=30)
    print(f"queue_id: {status.queue_id}")
    state_names = method.output_type.fields_by_name["recipients"].message_type.fields_by_name["state"].enum_type
    for r in status.recipients:
        print(f"recipient: {r.address} {state_names.values_by_number[r.state].name}")
    try:
        call(request_class(queue_id="01KB3X8Z4N6Q2V7W9Y0A1B2C3D"), timeout=30)
        print("unknown: found")
    except grpc.RpcError as e:
        print(f"unknown: {e.code().name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
