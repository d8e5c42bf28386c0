CREATE TABLE trk_projects (
    id TEXT PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE trk_milestones (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX trk_milestones_project ON trk_milestones (project_id, id);
CREATE TABLE trk_tasks (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    milestone_id TEXT,
    parent_id TEXT,
    status TEXT NOT NULL,
    category TEXT NOT NULL,
    prio_key BIGINT NOT NULL,
    estimate BIGINT,
    due_date TEXT,
    title_lower TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    updated_us BIGINT NOT NULL,
    version BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX trk_tasks_project_created ON trk_tasks (project_id, created_us, id);
CREATE INDEX trk_tasks_project_status ON trk_tasks (project_id, status, created_us, id);
CREATE INDEX trk_tasks_milestone ON trk_tasks (milestone_id, category);
CREATE TABLE trk_task_tags (
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    task_id TEXT NOT NULL,
    PRIMARY KEY (kind, value, task_id)
);
CREATE INDEX trk_task_tags_task ON trk_task_tags (task_id);
CREATE TABLE trk_watchers (
    task_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    PRIMARY KEY (task_id, subject)
);
CREATE TABLE trk_activity (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    task_id TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX trk_activity_task ON trk_activity (task_id, id);
CREATE INDEX trk_activity_project ON trk_activity (project_id, id);
CREATE TABLE trk_comments (
    id TEXT PRIMARY KEY NOT NULL,
    task_id TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX trk_comments_task ON trk_comments (task_id, id);
CREATE TABLE trk_notifications (
    id TEXT PRIMARY KEY NOT NULL,
    recipient TEXT NOT NULL,
    read_us BIGINT,
    doc TEXT NOT NULL
);
CREATE INDEX trk_notifications_recipient ON trk_notifications (recipient, id);
CREATE TABLE trk_idempotency (
    subject TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (subject, key)
);
CREATE TABLE trk_webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX trk_webhooks_project ON trk_webhooks (project_id);
CREATE TABLE trk_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    created_us BIGINT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX trk_events_project ON trk_events (project_id, created_us);
CREATE TABLE trk_deliveries (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    webhook_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_us BIGINT NOT NULL,
    lease_token TEXT,
    lease_until_us BIGINT,
    doc TEXT NOT NULL
);
CREATE INDEX trk_deliveries_pending ON trk_deliveries (webhook_id, seq) WHERE state = 'pending';
CREATE INDEX trk_deliveries_webhook ON trk_deliveries (webhook_id, id);
CREATE INDEX trk_tasks_project_priority ON trk_tasks (project_id, prio_key, id);
CREATE INDEX trk_tasks_project_updated ON trk_tasks (project_id, updated_us, id);
CREATE INDEX trk_tasks_created ON trk_tasks (created_us, id);
CREATE INDEX trk_tasks_updated ON trk_tasks (updated_us, id);
