-- LabLink schema, version 4: the participant's workspace. A VM now reports the phases of
-- preparing its workspace container (image pull, tutorial clone, startup script) beside
-- cloud-init and the container, and how start-host ended when it ran for an assignment
-- (shown to the admin; the output has the code and PIN removed by the daemon).

ALTER TABLE vms
    ADD COLUMN image_pull_start      TIMESTAMPTZ,
    ADD COLUMN image_pull_end        TIMESTAMPTZ,
    ADD COLUMN tutorial_clone_start  TIMESTAMPTZ,
    ADD COLUMN tutorial_clone_end    TIMESTAMPTZ,
    ADD COLUMN startup_script_start  TIMESTAMPTZ,
    ADD COLUMN startup_script_end    TIMESTAMPTZ,
    ADD COLUMN start_host_ok         BOOLEAN,
    ADD COLUMN start_host_exit_code  INTEGER,
    ADD COLUMN start_host_output     TEXT CHECK (length(start_host_output) <= 2000),
    ADD COLUMN start_host_at         TIMESTAMPTZ;
