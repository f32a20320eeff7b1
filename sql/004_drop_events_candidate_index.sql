-- proctoring_events is the table every event lands in, and each index on it is paid per event:
-- bench/sqlcost.py measured this one at a quarter of the table's write cost (135 000 rows/s
-- without it, 103 000 with it, on one connection). A candidate's events are reached through
-- proctoring_sessions instead (one row per exam and candidate, indexed by candidate_id), whose
-- key leads proctoring_events' primary key:
--
--     SELECT e.* FROM proctoring_sessions s
--     JOIN proctoring_events e USING (exam_id, candidate_id)
--     WHERE s.candidate_id = $1 ORDER BY e.created_at;
DROP INDEX IF EXISTS proctoring_events_candidate_idx;
