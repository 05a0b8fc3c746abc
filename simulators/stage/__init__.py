"""Harness: starts and stops the real services and processes that tests, benchmarks and the demo
run against (gateway processes, PostgreSQL, Mosquitto, Kafka brokers). It simulates no device."""
