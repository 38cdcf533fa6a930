-- When each telemetry row reached this database. The live scorer reads the seconds that got a
-- row since its last round, whatever their timestamp: an agent replaying its buffer after an
-- outage writes rows minutes old, and a scorer reading by timestamp alone (the last few seconds
-- again each round) never saw them, so its windows kept holes where the agent had data.
-- `now()` is stable: adding the column rewrites nothing, existing rows get the migration's time.
-- A replicated row keeps the time it reached its origin.
ALTER TABLE appliance_health ADD COLUMN received_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE path_probes ADD COLUMN received_at timestamptz NOT NULL DEFAULT now();
-- Rows arrive in received_at order, so block ranges summarise it well and cost little to keep.
CREATE INDEX appliance_health_received ON appliance_health USING brin (received_at);
CREATE INDEX path_probes_received ON path_probes USING brin (received_at);
