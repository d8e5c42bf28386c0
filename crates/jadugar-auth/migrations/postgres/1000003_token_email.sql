-- A one-time token (password reset, email verification) is bound to the
-- address it was mailed to: the hex SHA-256 of the normalised email. It is
-- redeemed only while that is still the user's email, so a token mailed to
-- an old address cannot act on (or verify) a new one. Tokens issued before
-- this column existed carry '' and are refused: they were bound to nothing.
ALTER TABLE auth_tokens ADD COLUMN email_hash TEXT NOT NULL DEFAULT '';
