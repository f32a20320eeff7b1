-- proctoring_events is the table every event lands in, and each index on it is paid per event:
-- bench/sqlcost.py measured this one at about a sixth of the table's whole write cost. A
-- candidate's events are reached through proctoring_sessions instead (one row per exam and
-- candidate, indexed by candidate_id), whose keys lead proctoring_events' primary key:
--
--     SELECT e.* FROM proctoring_sessions s
--     JOIN proctoring_events e USING (exam_id, candidate_id)
--     WHERE s.candidate_id = $1 ORDER BY e.created_at;
DROP INDEX IF EXISTS proctoring_events_candidate_idx;
