-- Hardening (issue 20): who may take a seat, revocable admin sessions, bounded logs.

-- The workshop's gate as the admin set it on the dashboard. One row; while there is
-- none, the deployment's defaults (LABLINK_WORKSHOP_*, LABLINK_SEATS_*) apply.
CREATE TABLE workshop_settings (
    id                INT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    access_code       TEXT CHECK (length(access_code) BETWEEN 1 AND 128),
    -- Lower-case emails and '@domain' entries; NULL: anyone.
    participants      TEXT[] CHECK (cardinality(participants) BETWEEN 1 AND 10000),
    seats_per_address INT NOT NULL CHECK (seats_per_address BETWEEN 1 AND 100000),
    window_minutes    INT NOT NULL CHECK (window_minutes BETWEEN 1 AND 1440),
    updated_by        TEXT NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- New seats per client address, counted in a fixed window (reserved before the
-- assignment, given back when no new seat came of it).
CREATE TABLE seat_request_windows (
    address      TEXT PRIMARY KEY CHECK (length(address) <= 64),
    requests     INT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL
);

-- Admin sessions. The cookie carries a random id (only its SHA-256 is here) under the
-- session key's signature; logout ends the row, "log out everywhere" ends them all, and
-- a session issued under an earlier password is not honoured (secret_epoch).
CREATE TABLE admin_sessions (
    id_hash      BYTEA PRIMARY KEY CHECK (length(id_hash) = 32),
    admin_user   TEXT NOT NULL,
    secret_epoch TEXT NOT NULL,
    address      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    ended_at     TIMESTAMPTZ
);
CREATE INDEX admin_sessions_live ON admin_sessions (admin_user) WHERE ended_at IS NULL;

-- Stored log lines per VM are capped; the oldest go first. The counts live beside the
-- VM, not in its row, so a log append never locks the row assignments take.
CREATE TABLE vm_log_stats (
    hostname TEXT PRIMARY KEY REFERENCES vms (hostname) ON DELETE CASCADE,
    stored   BIGINT NOT NULL DEFAULT 0,
    dropped  BIGINT NOT NULL DEFAULT 0
);
INSERT INTO vm_log_stats (hostname, stored)
    SELECT hostname, count(*) FROM vm_log_lines GROUP BY hostname;
