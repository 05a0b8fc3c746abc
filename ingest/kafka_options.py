"""The Kafka client options every Kafka-speaking command shares (`ofd serve`, `ofd load`,
`ofd forward`): how they authenticate and encrypt toward the brokers. The SASL password is read
from a file, never given as a flag or a variable (both show in /proc)."""

import argparse
from pathlib import Path

from ingest.cli_options import option
from ledger.journal.kafka import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaSecurity


def add_kafka_security(parser: argparse.ArgumentParser) -> None:
    option(
        parser,
        "--kafka-security-protocol",
        choices=SECURITY_PROTOCOLS,
        env="OFD_KAFKA_SECURITY_PROTOCOL",
        default="PLAINTEXT",
        help="how Kafka clients reach the brokers: TLS (SSL), SASL, both (SASL_SSL) or neither",
    )
    option(
        parser,
        "--kafka-ca-file",
        env="OFD_KAFKA_CA_FILE",
        default="",
        help="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)",
    )
    option(
        parser,
        "--kafka-cert-file",
        env="OFD_KAFKA_CERT_FILE",
        default="",
        help="PEM file of this client's certificate, for brokers that require mutual TLS",
    )
    option(
        parser,
        "--kafka-key-file",
        env="OFD_KAFKA_KEY_FILE",
        default="",
        help="PEM file of that certificate's private key",
    )
    option(
        parser,
        "--kafka-sasl-mechanism",
        choices=SASL_MECHANISMS,
        env="OFD_KAFKA_SASL_MECHANISM",
        default=None,
        help="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)",
    )
    option(
        parser,
        "--kafka-sasl-username",
        env="OFD_KAFKA_SASL_USERNAME",
        default="",
        help="SASL user name",
    )
    option(
        parser,
        "--kafka-sasl-password-file",
        env="OFD_KAFKA_SASL_PASSWORD_FILE",
        default="",
        help="file holding the SASL password (its first line)",
    )


def kafka_security_from(args: argparse.Namespace) -> KafkaSecurity:
    """The security the options ask for; ValueError (a one-line CLI error) when they
    contradict each other or the password file cannot be read."""
    password = None
    if args.kafka_sasl_password_file:
        path = Path(args.kafka_sasl_password_file)
        try:
            password = path.read_text().splitlines()[0].strip() or None
        except (OSError, IndexError) as err:
            raise ValueError(f"cannot read --kafka-sasl-password-file {path}") from err
    return KafkaSecurity(
        protocol=args.kafka_security_protocol,
        ca_file=args.kafka_ca_file or None,
        cert_file=args.kafka_cert_file or None,
        key_file=args.kafka_key_file or None,
        sasl_mechanism=args.kafka_sasl_mechanism or None,
        sasl_username=args.kafka_sasl_username or None,
        sasl_password=password,
    )
