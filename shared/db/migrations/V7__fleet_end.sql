-- A fleet cannot be forgotten (issue 21): the time the fleet is destroyed. One row while
-- a fleet has an end; a destroy (any) clears it with the fleet.
CREATE TABLE fleet_schedule (
    id      INT PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    ends_at TIMESTAMPTZ NOT NULL,
    set_by  TEXT NOT NULL,
    set_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
