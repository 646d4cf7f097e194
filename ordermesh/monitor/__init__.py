"""The live monitor's model: what flows through NATS (a bounded buffer of recent messages
with statistics, fed by a tap) and which processes are alive (their heartbeats), for the
GraphQL API in ``ordermesh.api`` to serve. Nothing here slows the system it watches."""
