-- The caller's TLS client certificate (mutual TLS, dicom.tls.client_ca_certificates):
-- its SHA-256 fingerprint, as `openssl x509 -fingerprint -sha256` prints it.
ALTER TABLE associations ADD COLUMN tls_client TEXT;
