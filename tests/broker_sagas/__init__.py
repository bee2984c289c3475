"""Sagas whose steps publish to real RabbitMQ and NATS JetStream servers and await messages."""
