-- The key that signs page and resume tokens (HMAC-SHA256, see src/token.rs).
--
-- A token carries a position a client hands back, such as the last trade a stream delivered; the stream reads on
-- from there. Signed with an unkeyed checksum, anyone could make one up. Signed with this key, only a server of
-- this database can: the key lives here, not in a server's memory or configuration, so tokens stay valid across
-- restarts and across the servers that share one database, and a token of another database is refused.
--
-- One row, made once, from gen_random_uuid() (built in since PostgreSQL 13, drawn from pg_strong_random): two
-- version-4 UUIDs give 244 random bits. A copy of the database (CREATE DATABASE ... TEMPLATE, a restored dump)
-- keeps the key, and so accepts the tokens of its original; to refuse them, write a new key (the same
-- expression) and restart the servers: tokens handed out before are then refused as damaged.
CREATE TABLE token_key (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    key bytea NOT NULL CHECK (length(key) >= 32)
);

INSERT INTO token_key (key)
SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
