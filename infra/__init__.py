"""Infrastructure adapters (event stores, the embedded NATS server) and deployment config."""
