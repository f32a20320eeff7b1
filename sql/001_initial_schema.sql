-- The tables of CONTRACT §4. Names are fixed: downstream queries and acceptance checks use them.
-- Text IDs stay text: vendor IDs are opaque.

-- Proctoring ---------------------------------------------------------------------------------

CREATE TABLE proctoring_events (
    exam_id         text        NOT NULL,
    candidate_id    text        NOT NULL,
    type            text        NOT NULL,
    created_at      timestamptz NOT NULL,
    description     text        NOT NULL DEFAULT '',
    media_url       text,
    details         jsonb,
    kafka_topic     text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    ingested_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exam_id, candidate_id, type, created_at),
    CONSTRAINT proctoring_events_type_known CHECK (type IN (
        'STARTED', 'END_PROCTORING', 'SET_CONFIG', 'FULLSCREEN_CHANGE', 'EXIT_FULLSCREEN',
        'TAB_FOCUS_CHANGE', 'TAB_NOT_FOCUS', 'FACE_ABSENCE', 'MULTIPLE_FACE', 'SOUND_DETECTED',
        'PERIODIC_SNAPSHOT', 'SYSTEM_CHECK_STARTED', 'SYSTEM_CHECK_COMPLETED'))
);
-- By exam is served by the primary key's leading column; by candidate needs its own index.
CREATE INDEX proctoring_events_candidate_idx ON proctoring_events (candidate_id, created_at);

CREATE TABLE proctoring_sessions (
    exam_id       text        NOT NULL,
    candidate_id  text        NOT NULL,
    started_at    timestamptz,
    ended_at      timestamptz,
    last_event_at timestamptz,
    -- Distinct flag events (EXIT_FULLSCREEN, TAB_NOT_FOCUS, FACE_ABSENCE, MULTIPLE_FACE,
    -- SOUND_DETECTED): incremented only by rows newly inserted into proctoring_events.
    flag_count    integer     NOT NULL DEFAULT 0,
    event_count   integer     NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (exam_id, candidate_id)
);
CREATE INDEX proctoring_sessions_candidate_idx ON proctoring_sessions (candidate_id);

CREATE TABLE system_checks (
    exam_id      text        NOT NULL,
    candidate_id text        NOT NULL,
    checked_at   timestamptz NOT NULL,
    success      boolean     NOT NULL,
    results      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (exam_id, candidate_id, checked_at)
);
CREATE INDEX system_checks_candidate_idx ON system_checks (candidate_id);

-- Interviews and applicants ------------------------------------------------------------------

CREATE TABLE candidates (
    candidate_id text PRIMARY KEY,
    name         text,
    email        text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    job_id     text PRIMARY KEY,
    name       text,
    ats_job_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applicants (
    job_application_id     text PRIMARY KEY,
    candidate_id           text NOT NULL,
    job_id                 text,
    ats_job_application_id text,
    ats_job_id             text,
    email                  text,
    candidate_name         text,
    job_name               text,
    stage                  text,
    resume_score           numeric,
    resume_url             text,
    status                 text NOT NULL CHECK (status IN ('created', 'invited', 'updated', 'completed')),
    date_created           timestamptz,
    date_modified          timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applicants_candidate_idx ON applicants (candidate_id);
CREATE INDEX applicants_job_idx ON applicants (job_id);

CREATE TABLE interviews (
    interview_id           text PRIMARY KEY,
    interview_name         text,
    candidate_id           text,
    job_id                 text,
    ats_job_id             text,
    ats_job_application_id text,
    date_started           timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX interviews_candidate_idx ON interviews (candidate_id);
CREATE INDEX interviews_job_idx ON interviews (job_id);

-- Four events merge into one report row in any order. A value two events both carry
-- (the recording URL, the proctoring score) is kept per source, and the public column is
-- computed with the dedicated event taking precedence, so arrival order never decides it.
CREATE TABLE interview_reports (
    report_id                              text PRIMARY KEY,
    interview_id                           text,
    session_id                             text,
    candidate_id                           text,
    job_applicant_id                       text,
    interview_name                         text,
    ats_job_id                             text,
    ats_job_application_id                 text,
    report_date                            date,
    report_url                             text,
    recording_url_from_report              text,
    recording_url_from_event               text,
    interview_recording_url                text GENERATED ALWAYS AS
        (COALESCE(recording_url_from_event, recording_url_from_report)) STORED,
    interview_recording_player_url         text,
    interview_webcam_recording_url         text,
    interview_webcam_recording_player_url  text,
    proctoring_score_from_report           numeric,
    proctoring_score_from_event            numeric,
    proctoring_score                       numeric GENERATED ALWAYS AS
        (COALESCE(proctoring_score_from_event, proctoring_score_from_report)) STORED,
    ai_match_score                         numeric,
    status                                 text,
    date_created                           timestamptz,
    date_modified                          timestamptz,
    interview_transcript                   jsonb,
    technical_skills_evaluation            jsonb,
    soft_skills_evaluation                 jsonb,
    coding_skills_evaluation               jsonb,
    custom_exercise_evaluation             jsonb,
    custom_question_evaluation             jsonb,
    -- Whether interview_report.created has been applied (the other three events create the
    -- row too, and a report without a report event is still waiting for it).
    has_report                             boolean NOT NULL DEFAULT false,
    updated_at                             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX interview_reports_candidate_idx ON interview_reports (candidate_id);
CREATE INDEX interview_reports_interview_idx ON interview_reports (interview_id);

CREATE TABLE proctoring_violations (
    report_id   text NOT NULL REFERENCES interview_reports (report_id) ON DELETE CASCADE,
    type        text NOT NULL,
    value       text,
    description text,
    PRIMARY KEY (report_id, type)
);

-- Progress ------------------------------------------------------------------------------------

-- A partition's next offset commits in the same transaction as the effects of the records
-- before it; this row, not Kafka's committed offset, is where a worker resumes.
CREATE TABLE consumer_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    next_offset bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);
