"""Code every civicline service shares: settings, logging, the event envelope, the AMQP
topology and I/O, health endpoints and database migrations."""
