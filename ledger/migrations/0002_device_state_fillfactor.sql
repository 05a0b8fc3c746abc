-- Every accepted request rewrites its device's row. Leaving room on each page lets PostgreSQL
-- update in place (HOT: no new index entry, less vacuum), since no indexed column changes.
ALTER TABLE device_state SET (fillfactor = 50);
