CREATE TABLE auth_users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    roles TEXT NOT NULL,
    disabled BOOLEAN NOT NULL,
    email_verified BOOLEAN NOT NULL,
    must_change_password BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    password_hash TEXT
);

CREATE TABLE auth_roles (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL,
    permissions TEXT NOT NULL,
    builtin BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE auth_api_keys (
    id TEXT PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT,
    secret_hash TEXT NOT NULL
);
CREATE INDEX auth_api_keys_owner ON auth_api_keys (owner_id);

CREATE TABLE auth_tokens (
    hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    user_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE auth_audit (
    id TEXT PRIMARY KEY,
    at BIGINT NOT NULL,
    action TEXT NOT NULL,
    actor TEXT,
    target TEXT,
    ip TEXT,
    user_agent TEXT,
    success BOOLEAN NOT NULL,
    detail TEXT
);
CREATE INDEX auth_audit_action ON auth_audit (action, id);
CREATE INDEX auth_audit_actor ON auth_audit (actor, id);
CREATE INDEX auth_audit_target ON auth_audit (target, id);

CREATE TABLE auth_signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    sealed_private TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);

CREATE TABLE auth_sessions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    salt TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    refreshed_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    ip TEXT,
    user_agent TEXT
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

CREATE FUNCTION auth_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'auth_audit is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER auth_audit_no_change BEFORE UPDATE OR DELETE ON auth_audit
    FOR EACH ROW EXECUTE FUNCTION auth_audit_append_only();
