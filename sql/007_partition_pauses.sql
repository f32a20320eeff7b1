-- Partitions an operator holds paused (`worker pause`, CONTRACT §1 and §8), per consumer group:
-- the group's running workers stop fetching them within seconds and keep them paused across
-- restarts and rebalances (read at every positioning), until `worker resume` deletes the row.
-- A handful of rows at most, read whole every couple of seconds by each worker.
CREATE TABLE IF NOT EXISTS partition_pauses (
    group_id  text        NOT NULL,
    topic     text        NOT NULL,
    partition integer     NOT NULL CHECK (partition >= 0),
    paused_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
