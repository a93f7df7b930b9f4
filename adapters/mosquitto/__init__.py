"""Mosquitto enforcement point: C plugin, its authz socket server, broker config and process."""
