-- proctoring_sessions rows are rewritten by nearly every batch (counters, last_event_at).
-- Free space on each page lets PostgreSQL update them in place (HOT: no new index entry, no
-- index bloat); none of the updated columns is indexed, so every update can be HOT.
ALTER TABLE proctoring_sessions SET (fillfactor = 70);
