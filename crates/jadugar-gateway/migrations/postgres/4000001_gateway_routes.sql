CREATE TABLE gateway_routes (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    revision BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE gateway_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO gateway_meta (id, version) VALUES (1, 0);
