-- Who the caller's TLS client certificate names (mutual TLS): its subject,
-- `CN=…, O=…`, beside the fingerprint in tls_client.
ALTER TABLE associations ADD COLUMN tls_subject TEXT;
