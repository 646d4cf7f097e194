"""Everything that speaks NATS: subjects, the CloudEvents codec, services, relay, projector."""
