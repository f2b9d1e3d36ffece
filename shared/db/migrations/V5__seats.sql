-- LabLink schema, version 5: seats that recover (a participant's fresh code reaches the
-- same VM, delivery is acknowledged, the participant follows the seat on a page of its
-- own, and the admin releases, reassigns or replaces one VM).
--
-- A seat's life: assigned (crd_command set, acknowledged_at NULL) → delivered (the holder
-- handed it over: delivered_at) → connected or refused (the daemon reported start-host's
-- outcome for THIS assignment: acknowledged_at, start_host_ok) → a fresh code starts
-- again at "assigned" → released (the row's seat columns cleared, reset_id set until
-- the daemon has reset the workspace).

ALTER TABLE vms
    -- The daemon reported start-host's outcome for the current assignment. Until then a
    -- credentialed VM's poll is handed the assignment again (classic credential-less
    -- VMs keep the classic rule: delivered once).
    ADD COLUMN acknowledged_at  TIMESTAMPTZ,
    -- Fresh codes sent to the current seat (the first assignment is not one) and when
    -- the last one was: the per-seat limits.
    ADD COLUMN code_changes     INTEGER NOT NULL DEFAULT 0 CHECK (code_changes >= 0),
    ADD COLUMN code_changed_at  TIMESTAMPTZ,
    -- A reset the admin ordered (release) that the daemon has not reported done; the VM
    -- is out of the pool meanwhile. Its number comes from `vm_reset_number`.
    ADD COLUMN reset_id         BIGINT,
    ADD COLUMN reset_keep_files BOOLEAN NOT NULL DEFAULT FALSE;

CREATE SEQUENCE vm_reset_number START 1;

-- A reassigned seat holds the new participant's email before their code: the email may
-- now stand without a command (V1 wanted all three or none). A command still needs its
-- PIN and an owner.
ALTER TABLE vms DROP CONSTRAINT vms_check;
ALTER TABLE vms ADD CONSTRAINT vms_assignment_whole
    CHECK ((crd_command IS NULL) = (pin IS NULL) AND (crd_command IS NULL OR user_email IS NOT NULL));

-- The free-seat scan now also skips VMs being reset.
DROP INDEX vms_free_seats;
CREATE INDEX vms_free_seats ON vms (created_at, hostname)
    WHERE user_email IS NULL AND status = 'running' AND reset_id IS NULL;

-- The participant's link to their seat's live page: the SHA-256 of an unguessable token
-- (the token itself is shown once, on the success page). A token names a seat (VM and
-- email); `ended` says why it no longer gives access. No foreign key: the page must
-- still say "this VM was replaced" after its row is gone.
CREATE TABLE seat_tokens (
    token_hash BYTEA PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    hostname   TEXT NOT NULL CHECK (length(hostname) <= 63),
    email      TEXT NOT NULL CHECK (length(email) <= 254),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended      TEXT CHECK (ended IN ('released', 'reassigned', 'replaced'))
);
CREATE INDEX seat_tokens_by_seat ON seat_tokens (hostname, email);

-- What admins did to single VMs: shown on the VM's row, kept after the VM is gone.
CREATE TABLE vm_actions (
    id       BIGSERIAL PRIMARY KEY,
    hostname TEXT NOT NULL CHECK (length(hostname) <= 63),
    action   TEXT NOT NULL CHECK (action IN ('release', 'reassign', 'replace')),
    actor    TEXT NOT NULL CHECK (length(actor) <= 200),
    detail   TEXT NOT NULL CHECK (length(detail) <= 1000),
    -- A release that kept the participant's files for the next data export.
    keep_files BOOLEAN NOT NULL DEFAULT FALSE,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX vm_actions_by_host ON vm_actions (hostname, id);
