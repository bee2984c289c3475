"""Message broker adapters on real RabbitMQ and NATS JetStream servers."""
