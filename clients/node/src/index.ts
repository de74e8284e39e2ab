// Custody's API for Node: the generated messages and services (src/gen/, from
// protos/custody/v1/custody.proto by `buf generate`), a connection helper (mTLS over
// HTTP/2, the files found as the Python client finds them), in-toto-style artifact
// recording and link files. examples/agent.ts uses all of it.

export * from "./gen/custody/v1/custody_pb.js";
export * from "./connection.js";
export * from "./artifacts.js";
export * from "./links.js";
