CREATE TABLE registry_counter (
    id BIGINT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO registry_counter (id, value) VALUES (1, 0);

CREATE TABLE registry_instances (
    service TEXT NOT NULL,
    id TEXT NOT NULL,
    data TEXT NOT NULL,
    modify_index BIGINT NOT NULL,
    ttl_deadline BIGINT,
    has_check BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (service, id)
);
CREATE INDEX registry_instances_checked ON registry_instances (has_check, lease_until);

CREATE TABLE registry_config (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    version BIGINT NOT NULL,
    value TEXT NOT NULL,
    kind TEXT NOT NULL,
    secret BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    modify_index BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT,
    PRIMARY KEY (namespace, key, version)
);
