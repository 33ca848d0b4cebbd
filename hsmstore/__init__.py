"""hsmstore: an HSM-backed key store with an AWS-KMS-style API over gRPC."""
