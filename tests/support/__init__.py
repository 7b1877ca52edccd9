"""Helpers the integration and end-to-end tests share: isolated broker vhosts and databases,
and the services run as real processes."""
