"""gRPC transport: protobuf <-> domain conversion, error mapping, interceptors."""
