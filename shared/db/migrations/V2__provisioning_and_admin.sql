-- LabLink schema, version 2: what provisioning, VM enrollment and admin sessions need.

-- Which launch job made a VM (its enrollment secrets are that job's).
ALTER TABLE vms ADD COLUMN job_id TEXT CHECK (length(job_id) <= 64);
ALTER TABLE vms ADD COLUMN enrolled_at TIMESTAMPTZ;

-- Hostnames `<deployment>-vm-<n>` take n from here: never reused, even after a destroy.
CREATE SEQUENCE vm_number START 1;

-- A launch job's enrollment secrets (SHA-256 only). A VM of the job presents one, with
-- its instance id, once; a retried launch adds a secret rather than replacing one, so
-- instances of an earlier attempt can still enroll.
CREATE TABLE vm_enrollment_secrets (
    job_id      TEXT NOT NULL CHECK (length(job_id) <= 64),
    secret_hash BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, secret_hash)
);

-- Failed admin logins per key (a client address, or the user name across addresses):
-- a sliding window that throttles guessing without locking the admin out everywhere.
CREATE TABLE admin_login_failures (
    key          TEXT PRIMARY KEY CHECK (length(key) <= 300),
    failures     INTEGER NOT NULL,
    window_start TIMESTAMPTZ NOT NULL
);

-- The embedded job store (running without AWS): the same records the DynamoDB store
-- keeps, in Postgres.
CREATE TABLE ops_jobs (
    id         TEXT PRIMARY KEY CHECK (length(id) <= 64),
    body       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE ops_locks (
    name        TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL
);
CREATE TABLE ops_settings (
    name       TEXT PRIMARY KEY,
    value      JSONB NOT NULL,
    expires_at TIMESTAMPTZ
);
