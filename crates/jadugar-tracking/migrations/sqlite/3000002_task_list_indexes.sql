-- Keyset pages filtered by project and category (optionally priority) walk
-- this index in sort order and stop after `limit` matches instead of
-- sorting every matching task.
CREATE INDEX trk_tasks_project_category ON trk_tasks (project_id, category, created_us, id);
