-- LabLink schema, version 1.
-- Columns follow seed 000's `vms` table (HostName, Pin, CrdCommand, UserEmail, InUse,
-- Healthy, Status, the Terraform/cloud-init/container timings, CreatedAt) in snake_case,
-- plus what the serverless design needs. Logs live in their own append-only table
-- instead of a TEXT column that was rewritten on every batch.

CREATE TABLE vms (
    hostname        TEXT PRIMARY KEY
                    CHECK (hostname ~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$'),
    instance_id     TEXT UNIQUE,
    pin             TEXT CHECK (pin ~ '^[0-9]{6}$'),
    -- The normalized command only; its length keeps the NOTIFY payload far below 8000 bytes.
    crd_command     TEXT CHECK (length(crd_command) <= 1024),
    user_email      TEXT CHECK (length(user_email) <= 254),
    in_use          BOOLEAN NOT NULL DEFAULT FALSE,
    healthy         TEXT CHECK (healthy IN ('Healthy', 'Unhealthy', 'N/A')),
    status          TEXT NOT NULL DEFAULT 'initializing'
                    CHECK (status IN ('initializing', 'running', 'error', 'unknown')),
    status_reason   TEXT CHECK (length(status_reason) <= 1024),
    -- SHA-256 of the VM's credential; the secret itself is never stored.
    credential_hash BYTEA CHECK (octet_length(credential_hash) = 32),

    -- Classic TerraformApply*: here the provisioner's RunInstances call.
    provision_start                   TIMESTAMPTZ,
    provision_end                     TIMESTAMPTZ,
    provision_duration_seconds        DOUBLE PRECISION,
    cloud_init_start                  TIMESTAMPTZ,
    cloud_init_end                    TIMESTAMPTZ,
    cloud_init_duration_seconds       DOUBLE PRECISION,
    container_start                   TIMESTAMPTZ,
    container_end                     TIMESTAMPTZ,
    container_startup_duration_seconds DOUBLE PRECISION,
    total_startup_duration_seconds    DOUBLE PRECISION,

    assigned_at     TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at    TIMESTAMPTZ,

    -- An assignment is all or nothing.
    CHECK ((user_email IS NULL) = (crd_command IS NULL) AND (crd_command IS NULL) = (pin IS NULL))
);

-- One seat per participant: the database, not the application, enforces it.
CREATE UNIQUE INDEX vms_one_seat_per_email ON vms (user_email) WHERE user_email IS NOT NULL;
-- The free-seat scan of the assignment statement.
CREATE INDEX vms_free_seats ON vms (created_at, hostname)
    WHERE user_email IS NULL AND status = 'running';

-- Seed 000 §3: the payload keys HostName, CrdCommand, Pin are a wire contract with
-- classic listeners. Fired only when a command is set or changed, never when cleared.
CREATE FUNCTION notify_crd_command_update() RETURNS TRIGGER AS $$
BEGIN
    IF NEW.crd_command IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.crd_command IS NOT DISTINCT FROM OLD.crd_command
       AND NEW.pin IS NOT DISTINCT FROM OLD.pin THEN
        RETURN NEW;
    END IF;
    PERFORM pg_notify(
        'vm_updates',
        json_build_object('HostName', NEW.hostname, 'CrdCommand', NEW.crd_command, 'Pin', NEW.pin)::text
    );
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_crd_command_insert_or_update
    AFTER INSERT OR UPDATE OF crd_command, pin ON vms
    FOR EACH ROW EXECUTE FUNCTION notify_crd_command_update();

-- Append-only VM log lines. `id` is the read cursor; (hostname, event_id) makes a
-- redelivered CloudWatch batch a no-op.
CREATE TABLE vm_log_lines (
    id          BIGSERIAL PRIMARY KEY,
    hostname    TEXT NOT NULL REFERENCES vms (hostname) ON DELETE CASCADE,
    event_id    TEXT NOT NULL CHECK (length(event_id) <= 128),
    logged_at   TIMESTAMPTZ NOT NULL,
    message     TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (hostname, event_id)
);
CREATE INDEX vm_log_lines_by_host ON vm_log_lines (hostname, id);
