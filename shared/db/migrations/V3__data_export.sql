-- LabLink schema, version 3: data export. An export job collects the participants' result
-- files: every assigned VM pushes one archive to an upload URL made for it alone, and
-- the job assembles them into one zip. The job itself lives in the job store; what the
-- VMs and the holder need (who must answer, with which URL, how far each got) lives here.

CREATE TABLE exports (
    job_id         TEXT PRIMARY KEY CHECK (length(job_id) <= 64),
    -- collecting: VMs are asked; assembling: the zip is being written; done / failed.
    state          TEXT NOT NULL CHECK (state IN ('collecting', 'assembling', 'done', 'failed')),
    extensions     TEXT[] NOT NULL,
    max_file_bytes BIGINT NOT NULL CHECK (max_file_bytes > 0),
    deadline       TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- One collecting export at a time (the fleet lock already serialises jobs; this keeps
-- the holder's "which export is open" question single-valued whatever happens).
CREATE UNIQUE INDEX exports_one_collecting ON exports ((true)) WHERE state = 'collecting';

CREATE TABLE export_vms (
    job_id     TEXT NOT NULL REFERENCES exports(job_id) ON DELETE CASCADE,
    hostname   TEXT NOT NULL CHECK (length(hostname) <= 63),
    email      TEXT,
    -- waiting: asked, not answered; uploading; done; no_files; failed (the VM said why);
    -- unreachable (no answer by the deadline).
    state      TEXT NOT NULL CHECK (state IN ('waiting', 'uploading', 'done', 'no_files', 'failed', 'unreachable')),
    upload_url TEXT NOT NULL,
    files      BIGINT NOT NULL DEFAULT 0,
    bytes      BIGINT NOT NULL DEFAULT 0,
    skipped    BIGINT NOT NULL DEFAULT 0,
    detail     TEXT CHECK (length(detail) <= 2000),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, hostname)
);
