-- Optimistic concurrency: every write of a user is conditional on the
-- version it read and increments it.
ALTER TABLE auth_users ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
