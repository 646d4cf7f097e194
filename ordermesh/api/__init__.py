"""The monitor's API: GraphQL over HTTP and WebSocket, and the web page, on one port.

It is a NATS client like any other: queries and mutations become ``queries.*`` and
``commands.*`` requests, subscriptions read what the broadcaster saw on NATS, and the
dashboard reads the metrics registry ``/metrics`` exports.
"""
