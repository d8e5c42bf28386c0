CREATE TABLE gateway_routes (
    id TEXT PRIMARY KEY NOT NULL,
    spec TEXT NOT NULL,
    revision INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE gateway_meta (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO gateway_meta (id, version) VALUES (1, 0);
