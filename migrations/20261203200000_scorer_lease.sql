-- One live risk scorer per region (issue 11): every `serve` of a region would otherwise score
-- the same telemetry and write the same scores. The instance holding the region's lease scores
-- and renews it every round; the others stand by and take over once it expires. Regional, not
-- replicated: each region's servers share only their own database.
CREATE TABLE scorer_leases (
    region      text        PRIMARY KEY,
    holder      text        NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    acquired_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
