-- Regions: cross-region replication (issue 8).
--
-- `local_region` holds at most one row: the region this database belongs to, written by
-- `shadowsteer db replication setup`. While it is empty (a single-region installation that was
-- never set up) nothing below is enforced.
--
-- Ownership: a database that knows its region refuses local writes (INSERT, UPDATE, DELETE) of
-- rows whose `region` is another region's, on every replicated table (SQLSTATE SSR01). Rows
-- arriving by replication are applied: the apply worker runs with
-- session_replication_role = replica, under which ordinary (ENABLE, "origin") triggers do not
-- fire; that is why the trigger is deliberately NOT `ENABLE ALWAYS`.
-- Writes made by other triggers (pg_trigger_depth() > 1) pass: an ON DELETE CASCADE from a row
-- this region owns (a client or appliance removed here) also removes the local copies of other
-- regions' rows that reference it.
--
-- `replication_heartbeats`: one row per region, its `beat_at` written at least once a second by
-- the region's `serve` and agents (an upsert of the one row; see README "Regions"). It
-- replicates like every other table; on a subscriber, a REPLICA trigger stamps `applied_at`
-- with the subscriber's clock when the row is applied, so lag = applied_at - beat_at.

CREATE TABLE local_region (
    -- Always true: the primary key makes this a one-row table.
    one     boolean     PRIMARY KEY DEFAULT true CHECK (one),
    region  text        NOT NULL
                        CHECK (region ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    set_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE replication_heartbeats (
    region      text        PRIMARY KEY
                            CHECK (region ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    -- When the region's writer wrote the beat (the publisher's clock).
    beat_at     timestamptz NOT NULL,
    -- When the beat was applied here by replication (the subscriber's clock); NULL for the
    -- local region's own row.
    applied_at  timestamptz
);

-- Refuses a local write of another region's row (see the header).
CREATE FUNCTION public.shadowsteer_own_rows_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    own text;
    row_region text;
BEGIN
    IF pg_catalog.pg_trigger_depth() > 1 THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END IF;
    SELECT l.region INTO own FROM public.local_region l;
    IF own IS NOT NULL THEN
        IF TG_OP = 'DELETE' THEN
            row_region := OLD.region;
        ELSE
            row_region := NEW.region;
            IF TG_OP = 'UPDATE' AND OLD.region IS DISTINCT FROM own THEN
                row_region := OLD.region;
            END IF;
        END IF;
        IF row_region IS DISTINCT FROM own THEN
            RAISE EXCEPTION USING
                ERRCODE = 'SSR01',
                MESSAGE = pg_catalog.format(
                    '%s: this database belongs to region %s and refuses local writes of region %s''s rows (they arrive by replication)',
                    TG_TABLE_NAME, own, row_region),
                HINT = 'write the row in its own region';
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$$;

-- Stamps when a replicated heartbeat was applied here (fires only in the apply worker).
CREATE FUNCTION public.shadowsteer_heartbeat_applied() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    NEW.applied_at := pg_catalog.clock_timestamp();
    RETURN NEW;
END
$$;
CREATE TRIGGER replication_heartbeats_applied BEFORE INSERT OR UPDATE ON public.replication_heartbeats
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_heartbeat_applied();
ALTER TABLE public.replication_heartbeats ENABLE REPLICA TRIGGER replication_heartbeats_applied;

-- The ownership trigger on every replicated table (the list `store::replication::TABLES`
-- publishes; path_probes and api_tokens stay regional).
CREATE TRIGGER regions_owner BEFORE INSERT OR UPDATE OR DELETE ON public.regions
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER appliances_owner BEFORE INSERT OR UPDATE OR DELETE ON public.appliances
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER clients_owner BEFORE INSERT OR UPDATE OR DELETE ON public.clients
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER session_state_owner BEFORE INSERT OR UPDATE OR DELETE ON public.session_state
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER risk_scores_owner BEFORE INSERT OR UPDATE OR DELETE ON public.risk_scores
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
-- risk_history comes with a migration numbered after this one (20261204000001): on a database
-- migrated from scratch it does not exist yet here. `db replication setup` creates the
-- ownership trigger on every replicated table that lacks it (CREATE OR REPLACE TRIGGER).
DO $$
BEGIN
    IF pg_catalog.to_regclass('public.risk_history') IS NOT NULL THEN
        CREATE TRIGGER risk_history_owner BEFORE INSERT OR UPDATE OR DELETE ON public.risk_history
            FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
    END IF;
END
$$;
CREATE TRIGGER advisories_owner BEFORE INSERT OR UPDATE OR DELETE ON public.advisories
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER failure_events_owner BEFORE INSERT OR UPDATE OR DELETE ON public.failure_events
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER steering_decisions_owner BEFORE INSERT OR UPDATE OR DELETE ON public.steering_decisions
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER appliance_health_owner BEFORE INSERT OR UPDATE OR DELETE ON public.appliance_health
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();
CREATE TRIGGER replication_heartbeats_owner BEFORE INSERT OR UPDATE OR DELETE ON public.replication_heartbeats
    FOR EACH ROW EXECUTE FUNCTION public.shadowsteer_own_rows_only();

-- Retention deletes only this region's own rows once the database knows its region: the
-- deletes replicate, so every region's copies are pruned by the owner's policy (a local delete
-- of another region's row would be refused by the ownership trigger anyway). A new function
-- rather than a replacement of shadowsteer_prune: a later-numbered migration (risk history)
-- replaces that one on databases migrated from scratch. Table names are resolved when it runs.
CREATE FUNCTION public.shadowsteer_prune_own(tbl text, older_than timestamptz, batch_limit integer)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    ts_column text;
    own text;
    deleted bigint;
BEGIN
    IF batch_limit IS NULL OR batch_limit < 1 OR batch_limit > 1000000 THEN
        RAISE EXCEPTION 'batch_limit must be between 1 and 1000000, got %', batch_limit;
    END IF;
    ts_column := CASE tbl
        WHEN 'appliance_health' THEN 'ts'
        WHEN 'path_probes' THEN 'ts'
        WHEN 'steering_decisions' THEN 'decided_at'
        WHEN 'failure_events' THEN 'started_at'
        WHEN 'risk_history' THEN 'computed_at'
        ELSE NULL END;
    IF ts_column IS NULL THEN
        RAISE EXCEPTION 'table % has no retention policy', tbl;
    END IF;
    SELECT l.region INTO own FROM public.local_region l;
    EXECUTE pg_catalog.format(
        'DELETE FROM public.%I WHERE ctid = ANY (ARRAY(SELECT ctid FROM public.%I WHERE %I < $1 AND ($3::text IS NULL OR region = $3) LIMIT $2))',
        tbl, tbl, ts_column)
        USING older_than, batch_limit, own;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;
